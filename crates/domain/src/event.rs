//! The referral events on `referral.events` (key: referral id).
//!
//! On Kafka an event travels in CloudEvents binary mode: the body is the JSON of the
//! payload struct, and the type travels in the `ce_type` header. Every payload carries
//! its referral id and when the fact happened, so a body read on its own still says
//! what it is about.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::ids::{Actor, AscCaseId, ProviderId, ReferralId, Source};
use crate::need::Need;
use crate::nhs_number::NhsNumber;
use crate::outcome::{OutcomeMeasure, Timepoint};
use crate::postcode::Postcode;
use crate::resource::ResourceJson;
use crate::{DecodeError, DomainEvent};

/// A FHIR Identifier reduced to what linkwork uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct Identifier {
    pub system: String,
    pub value: String,
}

/// A person's name as the referral gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PersonName {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub given: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
}

/// Who the referral is for. Identifiable data: it stays on `referral.events`, the
/// provider the referral is routed to, and the referrer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Subject {
    /// Present unless the referral came from a self-referral or the contact centre
    /// without one, in which case name, birth date and postcode identify the person.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nhs_number: Option<NhsNumber>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<PersonName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<NaiveDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcode: Option<Postcode>,
    /// Preferred language (BCP 47 tag, e.g. `en`, `pa`, `ur`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
}

/// How soon the referrer asks for contact (FHIR request-priority).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Priority {
    Routine,
    Urgent,
    Asap,
    Stat,
}

/// A referral accepted by ingest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralReceived {
    pub referral_id: ReferralId,
    /// The authenticated client that sent it.
    pub source: Source,
    /// The source's own ServiceRequest identifier; with `source` it derives `referral_id`.
    pub source_identifier: Identifier,
    pub subject: Subject,
    pub needs: Vec<Need>,
    /// The professional who made the referral (FHIR reference or display), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    pub priority: Priority,
    pub authored_on: DateTime<Utc>,
    /// For ASC diversions, the call-log case the person was diverted from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asc_case_id: Option<AscCaseId>,
    /// SHA-256 (hex) of the canonical form of the referral as received; a resubmission
    /// with the same id but a different hash is a conflict, not a duplicate.
    pub content_hash: String,
    /// The FHIR ServiceRequest as received (its id set to the referral id), for the
    /// provider's bundle.
    pub service_request: ResourceJson,
    /// The Patient the ServiceRequest's subject resolved to (contained or in the same
    /// Bundle), when one was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<ResourceJson>,
    /// The person has registered a national data opt-out (the referrer's system
    /// checked): their data is not used for evaluation unless they consent explicitly.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub national_data_opt_out: bool,
    /// The client that sent it when that is not the source itself: a self-referral
    /// front end's per-submission identity (`self:<id>`), which alone may read it back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitted_by: Option<String>,
    /// What identifies the person (`subject`, `requester`, `service_request`,
    /// `patient`), sealed under their own data key; when present those fields hold
    /// placeholders (see [`ReferralReceived::take_identity`]). A reader opens it with
    /// linkwork-vault; once the person is erased it never opens again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<Sealed>,
    pub occurred_at: DateTime<Utc>,
}

/// A value sealed under one person's data key (AES-256-GCM, the person bound in as
/// associated data): what the log holds in place of what identifies them.
/// linkwork-vault seals and opens it; erasing the person destroys the key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Sealed {
    /// The id of the data key it is sealed under (a random UUID, which says nothing
    /// about the person; once the key is destroyed it names nothing).
    pub key: String,
    /// The 96-bit nonce, base64.
    pub nonce: String,
    /// The ciphertext with its tag, base64.
    pub ciphertext: String,
}

impl std::fmt::Debug for Sealed {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Sealed")
            .field("key", &self.key)
            .field("bytes", &self.ciphertext.len())
            .finish()
    }
}

/// What identifies the person on a [`ReferralReceived`]: the parts sealed on the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferralIdentity {
    pub subject: Subject,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester: Option<String>,
    pub service_request: ResourceJson,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<ResourceJson>,
}

/// The security label FHIR gives a redacted resource (v3 ObservationValue `REDACTED`).
pub const REDACTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// The ServiceRequest that stands in for one whose person's data is sealed or erased:
/// its id, status `unknown`, labelled `REDACTED`, and nothing about the person.
pub fn redacted_service_request(referral_id: ReferralId) -> ResourceJson {
    ResourceJson::from_value(&serde_json::json!({
        "resourceType": "ServiceRequest",
        "id": referral_id.to_string(),
        "meta": {"security": [{
            "system": REDACTED_SYSTEM,
            "code": "REDACTED",
            "display": "redacted"
        }]},
        "status": "unknown",
        "intent": "order",
        "subject": {"display": "redacted: the person's data is sealed or was erased"}
    }))
}

/// The CloudEvents type of a redaction notice on an outbound topic (a provider's
/// queue, triage, a referrer's outcomes): see [`erasure_notice`].
pub const REDACTION_NOTICE_TYPE: &str = "linkwork.referral.redacted.v1";

/// What goes to everyone linkwork gave a referral's identifying data to, once the
/// person is erased: the redacted ServiceRequest (same id), with a note asking them to
/// delete what they hold about the person.
pub fn erasure_notice(referral_id: ReferralId, erased_at: DateTime<Utc>) -> serde_json::Value {
    let mut notice = redacted_service_request(referral_id).to_value();
    notice["note"] = serde_json::json!([{
        "time": erased_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "text": "The person's data was erased at their request (UK GDPR Article 17). \
                 Delete what you hold about them from this referral: linkwork no longer holds it."
    }]);
    notice
}

impl ReferralReceived {
    /// Takes out what identifies the person, leaving placeholders: an empty subject,
    /// no requester or Patient, and [`redacted_service_request`].
    pub fn take_identity(&mut self) -> ReferralIdentity {
        ReferralIdentity {
            subject: std::mem::take(&mut self.subject),
            requester: self.requester.take(),
            service_request: std::mem::replace(
                &mut self.service_request,
                redacted_service_request(self.referral_id),
            ),
            patient: self.patient.take(),
        }
    }

    /// Puts an opened identity back: the event as it was before it was sealed.
    pub fn restore_identity(&mut self, identity: ReferralIdentity) {
        self.subject = identity.subject;
        self.requester = identity.requester;
        self.service_request = identity.service_request;
        self.patient = identity.patient;
        self.sealed = None;
    }

    /// Whether what identifies the person is still sealed (not opened here: the
    /// person was erased, or this reader has no vault), so the event holds
    /// placeholders.
    pub fn is_redacted(&self) -> bool {
        self.sealed.is_some()
    }
}

/// Why a candidate provider was or was not chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CandidateAssessment {
    pub provider_id: ProviderId,
    pub eligible: bool,
    /// Empty for an eligible candidate; otherwise each rule it failed, in words.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_because: Vec<String>,
}

/// A routing decision: the referral is on the chosen provider's queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralRouted {
    pub referral_id: ReferralId,
    pub provider_id: ProviderId,
    /// 1 for the first routing, then one more for each re-routing.
    pub attempt: u32,
    /// The provider directory version the decision used.
    pub directory_version: String,
    /// The rule that picked this provider among the eligible ones.
    pub rule: String,
    pub candidates: Vec<CandidateAssessment>,
    /// When the provider must have accepted or rejected by; after it the router escalates.
    pub accept_by: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
}

/// No eligible provider: the referral goes to triage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralUnroutable {
    pub referral_id: ReferralId,
    pub directory_version: String,
    pub reasons: Vec<String>,
    pub candidates: Vec<CandidateAssessment>,
    pub occurred_at: DateTime<Utc>,
}

/// A provider's status change on its Task, or a note on a fact it recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ProviderStatusChange {
    pub referral_id: ReferralId,
    pub provider_id: ProviderId,
    /// Free text from the provider (a rejection or failure reason, a hold reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// A referral closed by someone other than the provider's workflow: the referrer
/// withdrawing it, a provider cancelling, or an administrator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralClosedBy {
    pub referral_id: ReferralId,
    pub by: Actor,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub occurred_at: DateTime<Utc>,
}

/// How a contact with the person happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ContactMode {
    Phone,
    InPerson,
    Video,
    Message,
    Letter,
}

/// The provider was in contact with the person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ContactRecorded {
    pub referral_id: ReferralId,
    pub provider_id: ProviderId,
    pub contact_at: DateTime<Utc>,
    pub mode: ContactMode,
    pub occurred_at: DateTime<Utc>,
}

/// What kind of activity a person attended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ActivityKind {
    /// A group or club ("want").
    Group,
    /// A service such as money advice or talking therapy ("need").
    Service,
    Volunteering,
    /// One-to-one time with a volunteer befriender.
    Befriending,
}

/// The person attended an activity the provider connected them with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActivityAttended {
    pub referral_id: ReferralId,
    pub provider_id: ProviderId,
    /// The provider's or directory's id of the group or service, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity_id: Option<String>,
    pub activity_name: String,
    pub kind: ActivityKind,
    pub attended_on: NaiveDate,
    pub occurred_at: DateTime<Utc>,
}

/// An outcome measure taken by the provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OutcomeRecorded {
    pub referral_id: ReferralId,
    pub provider_id: ProviderId,
    /// The id of the FHIR Observation this measure is published as.
    pub observation_id: Uuid,
    pub timepoint: Timepoint,
    pub measure: OutcomeMeasure,
    pub effective_at: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
}

/// What a consent covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ConsentScope {
    /// Sharing pseudonymised outcomes with data teams for evaluation.
    Evaluation,
}

/// Consent given or withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ConsentChange {
    pub referral_id: ReferralId,
    pub scope: ConsentScope,
    pub recorded_by: Actor,
    pub occurred_at: DateTime<Utc>,
}

/// The person's data was erased (their data key destroyed): what identified them on
/// this referral can no longer be read, and every reader redacts what it holds and
/// tells those it sent it to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ReferralErased {
    pub referral_id: ReferralId,
    /// The administrator (or linkwork service) that erased them.
    pub erased_by: Actor,
    pub occurred_at: DateTime<Utc>,
}

/// Every fact about a referral.
#[derive(Debug, Clone, PartialEq)]
pub enum ReferralEvent {
    /// Boxed: it carries the whole ServiceRequest and dwarfs the other events.
    Received(Box<ReferralReceived>),
    Routed(ReferralRouted),
    Unroutable(ReferralUnroutable),
    Accepted(ProviderStatusChange),
    Rejected(ProviderStatusChange),
    /// Support started, or resumed after a hold (Task `in-progress`).
    Started(ProviderStatusChange),
    OnHold(ProviderStatusChange),
    Completed(ProviderStatusChange),
    Failed(ProviderStatusChange),
    Cancelled(ReferralClosedBy),
    EnteredInError(ReferralClosedBy),
    ContactRecorded(ContactRecorded),
    ActivityAttended(ActivityAttended),
    OutcomeRecorded(OutcomeRecorded),
    ConsentRecorded(ConsentChange),
    ConsentWithdrawn(ConsentChange),
    Erased(ReferralErased),
}

/// Declares the event types once: CloudEvents type, variant and payload.
macro_rules! referral_event_types {
    ($($type_name:literal => $variant:ident($payload:ty)),+ $(,)?) => {
        impl ReferralEvent {
            /// Every CloudEvents type on `referral.events`, with its payload's JSON Schema.
            pub fn type_schemas() -> Vec<(&'static str, schemars::Schema)> {
                vec![$(($type_name, schemars::schema_for!($payload))),+]
            }
        }

        impl DomainEvent for ReferralEvent {
            const TYPES: &'static [&'static str] = &[$($type_name),+];

            fn event_type(&self) -> &'static str {
                match self {
                    $(Self::$variant(_) => $type_name),+
                }
            }

            fn decode(event_type: &str, body: &[u8]) -> Result<Self, DecodeError> {
                match event_type {
                    $($type_name => serde_json::from_slice::<$payload>(body)
                        .map(Self::$variant)
                        .map_err(|error| DecodeError::from_json($type_name, &error)),)+
                    other => Err(DecodeError::UnknownType(other.to_owned())),
                }
            }

            fn encode(&self) -> Vec<u8> {
                let encoded = match self {
                    $(Self::$variant(payload) => serde_json::to_vec(payload)),+
                };
                // Serializing these plain structs cannot fail: no maps with non-string
                // keys, no custom serializers that error.
                encoded.unwrap_or_else(|error| unreachable!("event serialization failed: {error}"))
            }

            fn key(&self) -> String {
                self.referral_id().to_string()
            }
        }
    };
}

referral_event_types! {
    "linkwork.referral.received.v1" => Received(Box<ReferralReceived>),
    "linkwork.referral.routed.v1" => Routed(ReferralRouted),
    "linkwork.referral.unroutable.v1" => Unroutable(ReferralUnroutable),
    "linkwork.referral.accepted.v1" => Accepted(ProviderStatusChange),
    "linkwork.referral.rejected.v1" => Rejected(ProviderStatusChange),
    "linkwork.referral.started.v1" => Started(ProviderStatusChange),
    "linkwork.referral.on-hold.v1" => OnHold(ProviderStatusChange),
    "linkwork.referral.completed.v1" => Completed(ProviderStatusChange),
    "linkwork.referral.failed.v1" => Failed(ProviderStatusChange),
    "linkwork.referral.cancelled.v1" => Cancelled(ReferralClosedBy),
    "linkwork.referral.entered-in-error.v1" => EnteredInError(ReferralClosedBy),
    "linkwork.referral.contact-recorded.v1" => ContactRecorded(ContactRecorded),
    "linkwork.referral.activity-attended.v1" => ActivityAttended(ActivityAttended),
    "linkwork.referral.outcome-recorded.v1" => OutcomeRecorded(OutcomeRecorded),
    "linkwork.referral.consent-recorded.v1" => ConsentRecorded(ConsentChange),
    "linkwork.referral.consent-withdrawn.v1" => ConsentWithdrawn(ConsentChange),
    "linkwork.referral.erased.v1" => Erased(ReferralErased),
}

impl ReferralEvent {
    pub fn referral_id(&self) -> ReferralId {
        match self {
            Self::Received(event) => event.referral_id,
            Self::Routed(event) => event.referral_id,
            Self::Unroutable(event) => event.referral_id,
            Self::Accepted(event)
            | Self::Rejected(event)
            | Self::Started(event)
            | Self::OnHold(event)
            | Self::Completed(event)
            | Self::Failed(event) => event.referral_id,
            Self::Cancelled(event) | Self::EnteredInError(event) => event.referral_id,
            Self::ContactRecorded(event) => event.referral_id,
            Self::ActivityAttended(event) => event.referral_id,
            Self::OutcomeRecorded(event) => event.referral_id,
            Self::ConsentRecorded(event) | Self::ConsentWithdrawn(event) => event.referral_id,
            Self::Erased(event) => event.referral_id,
        }
    }

    pub fn occurred_at(&self) -> DateTime<Utc> {
        match self {
            Self::Received(event) => event.occurred_at,
            Self::Routed(event) => event.occurred_at,
            Self::Unroutable(event) => event.occurred_at,
            Self::Accepted(event)
            | Self::Rejected(event)
            | Self::Started(event)
            | Self::OnHold(event)
            | Self::Completed(event)
            | Self::Failed(event) => event.occurred_at,
            Self::Cancelled(event) | Self::EnteredInError(event) => event.occurred_at,
            Self::ContactRecorded(event) => event.occurred_at,
            Self::ActivityAttended(event) => event.occurred_at,
            Self::OutcomeRecorded(event) => event.occurred_at,
            Self::ConsentRecorded(event) | Self::ConsentWithdrawn(event) => event.occurred_at,
            Self::Erased(event) => event.occurred_at,
        }
    }
}
