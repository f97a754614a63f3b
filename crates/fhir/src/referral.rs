//! A FHIR ServiceRequest as a linkwork referral: the rules a referral must meet, each
//! refusal naming the element at fault, and the mapping to `ReferralReceived`.
//!
//! Every rule is checked and every problem reported, so a sender fixes everything in
//! one round. Rules read the JSON (after the model has accepted its structure) so each
//! issue carries the exact FHIRPath of the element, index included.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use linkwork_domain::event::{Identifier, PersonName, Priority, ReferralReceived, Subject};
use linkwork_domain::nhs_number::NHS_NUMBER_SYSTEM;
use linkwork_domain::{
    AscCaseId, Need, NhsNumber, Postcode, ReferralId, ResourceJson, Source, SourceKind,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::outcome::{Issue, IssueCode};
use crate::resolve::Resolver;

/// SNOMED CT.
pub use crate::systems::SNOMED_CT as SNOMED;
/// SNOMED CT "Referral to social prescribing service".
pub const SOCIAL_PRESCRIBING_REFERRAL: &str = "871731000000106";
/// The BaRS ServiceRequest category code system.
pub const BARS_CATEGORY_SYSTEM: &str =
    "https://fhir.nhs.uk/CodeSystem/message-category-servicerequest";

/// A deployment's choices about what a referral may say.
#[derive(Debug, Clone)]
pub struct IntakeRules {
    /// Base of linkwork's CodeSystems, e.g. `https://linkwork.example/fhir`.
    pub canonical_base: String,
    /// (system, code) pairs accepted in place of the social-prescribing SNOMED CT code.
    pub equivalent_codes: Vec<(String, String)>,
    /// SNOMED CT concepts the deployment maps onto needs, beyond the built-in ones.
    pub extra_snomed_needs: Vec<(String, Need)>,
    /// How far in the future `authoredOn` may be (senders' clocks drift).
    pub clock_skew: chrono::Duration,
}

impl Default for IntakeRules {
    fn default() -> Self {
        Self {
            canonical_base: crate::systems::DEFAULT_CANONICAL_BASE.into(),
            equivalent_codes: Vec::new(),
            extra_snomed_needs: Vec::new(),
            clock_skew: chrono::Duration::minutes(5),
        }
    }
}

impl IntakeRules {
    pub fn need_system(&self) -> String {
        format!("{}/CodeSystem/need", self.canonical_base)
    }

    /// Identifier system of an ASC call-log case, for ASC diversions.
    pub fn asc_case_system(&self) -> String {
        format!("{}/Id/asc-case", self.canonical_base)
    }
}

/// Where the ServiceRequest is and how it may be identified.
#[derive(Debug, Clone)]
pub struct Located<'a> {
    pub resource: &'a Value,
    /// FHIRPath of the resource, e.g. `ServiceRequest` or `Bundle.entry[1].resource`.
    pub path: String,
    /// An identifier to fall back on when the ServiceRequest has none (a BaRS entry's
    /// `urn:uuid:` fullUrl).
    pub fallback_identifier: Option<Identifier>,
}

/// A referral that passed every rule.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedReferral {
    pub referral_id: ReferralId,
    pub source: Source,
    pub identifier: Identifier,
    pub subject: Subject,
    pub needs: Vec<Need>,
    pub requester: Option<String>,
    pub priority: Priority,
    pub authored_on: DateTime<Utc>,
    pub asc_case_id: Option<AscCaseId>,
    pub content_hash: String,
    /// The ServiceRequest as received, its `id` set to the referral id, as JSON text.
    pub service_request: ResourceJson,
    pub patient: Option<Value>,
    /// The referral says the person has a national data opt-out.
    pub national_data_opt_out: bool,
    /// Set by the receiver: a per-submission identity that sent it (`self:<id>`).
    pub submitted_by: Option<String>,
}

impl ValidatedReferral {
    pub fn into_event(self, received_at: DateTime<Utc>) -> ReferralReceived {
        ReferralReceived {
            referral_id: self.referral_id,
            source: self.source,
            source_identifier: self.identifier,
            subject: self.subject,
            needs: self.needs,
            requester: self.requester,
            priority: self.priority,
            authored_on: self.authored_on,
            asc_case_id: self.asc_case_id,
            content_hash: self.content_hash,
            service_request: self.service_request,
            patient: self.patient.map(Into::into),
            national_data_opt_out: self.national_data_opt_out,
            submitted_by: self.submitted_by,
            sealed: None,
            occurred_at: received_at,
        }
    }
}

/// The identity of a referral: the source's identifier and the referral id it derives.
pub fn identity(source: &Source, request: &Located<'_>) -> Result<(Identifier, ReferralId), Issue> {
    let identifier = request
        .resource
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find_map(|identifier| {
            let system = identifier.get("system").and_then(Value::as_str)?;
            let value = identifier.get("value").and_then(Value::as_str)?;
            (!system.is_empty() && !value.is_empty()).then(|| Identifier {
                system: system.to_owned(),
                value: value.to_owned(),
            })
        })
        .or_else(|| request.fallback_identifier.clone())
        .ok_or_else(|| {
            Issue::error(
                IssueCode::Required,
                "the referral needs an identifier with a system and a value (your own reference for it), so that \
                 a resubmission is recognised as the same referral",
            )
            .at(format!("{}.identifier", request.path))
        })?;
    let referral_id = ReferralId::derive(source, &identifier.system, &identifier.value);
    Ok((identifier, referral_id))
}

/// A ServiceRequest sent alone (`POST /fhir/ServiceRequest`, a file, a benchmark): a
/// resource of that type, its structure read against the R4 model, then every rule.
pub fn read_service_request(
    source: &Source,
    body: &Value,
    rules: &IntakeRules,
    now: DateTime<Utc>,
) -> Result<ValidatedReferral, Vec<Issue>> {
    const PATH: &str = "ServiceRequest";
    crate::parse::expect_resource_type(body, PATH, PATH).map_err(|issue| vec![issue])?;
    crate::parse::check_service_request(body, PATH)?;
    let located = Located {
        resource: body,
        path: PATH.into(),
        fallback_identifier: None,
    };
    let resolver = Resolver::new().with_contained(body, PATH);
    validate(source, &located, &resolver, rules, now)
}

/// A BaRS message Bundle read whole (a file, a benchmark): its envelope
/// ([`crate::message::read`]), then its ServiceRequest against every rule, as ingest
/// does for a `new` message. Ingest itself reads the envelope first and validates only
/// what the message's reason asks for.
pub fn read_message(
    source: &Source,
    bundle: &Value,
    rules: &IntakeRules,
    now: DateTime<Utc>,
) -> Result<ValidatedReferral, Vec<Issue>> {
    let message = crate::message::read(bundle)?;
    validate(
        source,
        &message.service_request,
        &message.resolver,
        rules,
        now,
    )
}

/// Checks a new referral from `source` against every rule.
pub fn validate(
    source: &Source,
    request: &Located<'_>,
    resolver: &Resolver<'_>,
    rules: &IntakeRules,
    now: DateTime<Utc>,
) -> Result<ValidatedReferral, Vec<Issue>> {
    let resource = request.resource;
    let path = request.path.as_str();
    let mut issues = Vec::new();

    let status = text(resource, "status");
    if status != Some("active") {
        issues.push(
            Issue::error(
                IssueCode::BusinessRule,
                format!(
                    "a new referral must have status active, not {}",
                    status.unwrap_or("(missing)")
                ),
            )
            .at(format!("{path}.status")),
        );
    }
    let intent = text(resource, "intent");
    if !matches!(intent, Some("order" | "original-order" | "plan")) {
        issues.push(
            Issue::error(
                IssueCode::BusinessRule,
                format!(
                    "intent must be order, original-order or plan (BaRS uses plan), not {}",
                    intent.unwrap_or("(missing)")
                ),
            )
            .at(format!("{path}.intent")),
        );
    }
    if resource.get("doNotPerform").and_then(Value::as_bool) == Some(true) {
        issues.push(
            Issue::error(
                IssueCode::BusinessRule,
                "a referral asking for the service not to be performed is not a referral",
            )
            .at(format!("{path}.doNotPerform")),
        );
    }

    let identity = identity(source, request)
        .map_err(|issue| issues.push(issue))
        .ok();
    check_not_a_validation_request(resource, path, &mut issues);
    check_asks_for_social_prescribing(resource, path, rules, &mut issues);
    let needs = needs(resource, path, rules, &mut issues);
    let authored_on = authored_on(resource, path, rules, now, &mut issues);
    let requester = requester(source, resource, path, resolver, &mut issues);
    let (subject, patient) = subject(source, resource, path, resolver, &mut issues);
    let asc_case_id = asc_case_id(resource, path, rules, &mut issues);
    let national_data_opt_out = national_data_opt_out(resource, path, rules, &mut issues);
    let priority = match text(resource, "priority") {
        Some("urgent") => Priority::Urgent,
        Some("asap") => Priority::Asap,
        Some("stat") => Priority::Stat,
        _ => Priority::Routine,
    };

    if !issues.is_empty() {
        return Err(issues);
    }
    // Each is present when no issue was raised.
    let (Some((identifier, referral_id)), Some(authored_on), Some(subject)) =
        (identity, authored_on, subject)
    else {
        return Err(vec![Issue::error(
            IssueCode::Exception,
            "referral validation lost a value it had checked",
        )]);
    };
    let content_hash = content_hash(resource, patient.as_ref().map(|(patient, _)| *patient));
    // Written once, here: the event carries this text and the answer to the sender
    // repeats it.
    let service_request =
        ResourceJson::from_value_with(resource, &[("id", &Value::String(referral_id.to_string()))]);
    Ok(ValidatedReferral {
        referral_id,
        source: source.clone(),
        identifier,
        subject,
        needs,
        requester,
        priority,
        authored_on,
        asc_case_id,
        content_hash,
        service_request,
        patient: patient.map(|(patient, _)| patient.clone()),
        national_data_opt_out,
        submitted_by: None,
    })
}

/// The national data opt-out, as the referrer's system found it: extension
/// `StructureDefinition/national-data-opt-out` (`valueBoolean`) on the ServiceRequest.
fn national_data_opt_out(
    resource: &Value,
    path: &str,
    rules: &IntakeRules,
    issues: &mut Vec<Issue>,
) -> bool {
    let url = format!(
        "{}/StructureDefinition/national-data-opt-out",
        rules.canonical_base
    );
    let mut opted_out = false;
    for (index, extension) in array(resource, "extension") {
        if extension.get("url").and_then(Value::as_str) != Some(url.as_str()) {
            continue;
        }
        match extension.get("valueBoolean").and_then(Value::as_bool) {
            Some(value) => opted_out |= value,
            None => issues.push(
                Issue::error(
                    IssueCode::Invalid,
                    "the national data opt-out extension needs valueBoolean (true when the person has opted out)",
                )
                .at(format!("{path}.extension[{index}]")),
            ),
        }
    }
    opted_out
}

/// A BaRS "validation" request asks a clinician to validate a case (urgent care); it
/// is not a referral to a service.
fn check_not_a_validation_request(resource: &Value, path: &str, issues: &mut Vec<Issue>) {
    for (index, category) in array(resource, "category") {
        for (system, code) in codings(category) {
            if system == Some(BARS_CATEGORY_SYSTEM) && code == Some("validation") {
                issues.push(
                    Issue::error(
                        IssueCode::BusinessRule,
                        "this is an urgent-care validation request (BaRS category validation), not a referral; \
                         linkwork takes referrals to community services",
                    )
                    .at(format!("{path}.category[{index}]")),
                );
            }
        }
    }
}

fn check_asks_for_social_prescribing(
    resource: &Value,
    path: &str,
    rules: &IntakeRules,
    issues: &mut Vec<Issue>,
) {
    let accepted = |system: Option<&str>, code: Option<&str>| {
        (system == Some(SNOMED) && code == Some(SOCIAL_PRESCRIBING_REFERRAL))
            || rules
                .equivalent_codes
                .iter()
                .any(|(equivalent_system, equivalent_code)| {
                    system == Some(equivalent_system.as_str())
                        && code == Some(equivalent_code.as_str())
                })
    };
    let in_code = resource
        .get("code")
        .map(|code| codings(code).any(|(system, code)| accepted(system, code)))
        .unwrap_or(false);
    let in_category = array(resource, "category")
        .any(|(_, category)| codings(category).any(|(system, code)| accepted(system, code)));
    if !(in_code || in_category) {
        issues.push(
            Issue::error(
                IssueCode::BusinessRule,
                format!(
                    "the referral must ask for social prescribing: SNOMED CT {SOCIAL_PRESCRIBING_REFERRAL} \
                     (Referral to social prescribing service) in code or category{}",
                    if rules.equivalent_codes.is_empty() { "" } else { ", or a code this service accepts as equivalent" }
                ),
            )
            .at(format!("{path}.code")),
        );
    }
}

fn needs(resource: &Value, path: &str, rules: &IntakeRules, issues: &mut Vec<Issue>) -> Vec<Need> {
    let need_system = rules.need_system();
    let mut needs = Vec::new();
    for (_, reason) in array(resource, "reasonCode") {
        for (system, code) in codings(reason) {
            let (Some(system), Some(code)) = (system, code) else {
                continue;
            };
            let need = if system == need_system {
                code.parse::<Need>().ok()
            } else if system == SNOMED {
                Need::from_snomed(code).or_else(|| {
                    rules
                        .extra_snomed_needs
                        .iter()
                        .find(|(concept, _)| concept == code)
                        .map(|(_, need)| *need)
                })
            } else {
                None
            };
            if let Some(need) = need {
                if !needs.contains(&need) {
                    needs.push(need);
                }
            }
        }
    }
    if needs.is_empty() {
        issues.push(
            Issue::error(
                IssueCode::BusinessRule,
                format!(
                    "no reason code names a need linkwork serves: code reasons with {need_system} (loneliness, \
                     social-isolation, low-mood-anxiety, bereavement, retirement, relocation, long-term-condition, \
                     caring, money-worries, digital-exclusion) or a mapped SNOMED CT concept such as 422650009 \
                     Social isolation"
                ),
            )
            .at(format!("{path}.reasonCode")),
        );
    }
    needs
}

fn authored_on(
    resource: &Value,
    path: &str,
    rules: &IntakeRules,
    now: DateTime<Utc>,
    issues: &mut Vec<Issue>,
) -> Option<DateTime<Utc>> {
    let location = format!("{path}.authoredOn");
    let Some(text) = text(resource, "authoredOn") else {
        issues.push(
            Issue::error(
                IssueCode::Required,
                "authoredOn (when the referral was made) is required",
            )
            .at(location),
        );
        return None;
    };
    let Some(authored_on) = parse_date_time(text) else {
        issues.push(
            Issue::error(
                IssueCode::Value,
                format!("authoredOn {text:?} is not a FHIR dateTime"),
            )
            .at(location),
        );
        return None;
    };
    if authored_on > now + rules.clock_skew {
        issues.push(
            Issue::error(
                IssueCode::Value,
                format!("authoredOn {text} is in the future"),
            )
            .at(location),
        );
        return None;
    }
    Some(authored_on)
}

/// Reads a FHIR dateTime (`2026`, `2026-03`, `2026-03-02`, or with a time and zone),
/// as the start of the period it names.
pub fn parse_date_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(full) = DateTime::parse_from_rfc3339(text) {
        return Some(full.with_timezone(&Utc));
    }
    let date = match text.len() {
        4 => NaiveDate::from_ymd_opt(text.parse().ok()?, 1, 1),
        7 => NaiveDate::parse_from_str(&format!("{text}-01"), "%Y-%m-%d").ok(),
        10 => NaiveDate::parse_from_str(text, "%Y-%m-%d").ok(),
        _ => None,
    }?;
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0)?).into()
}

fn requester(
    source: &Source,
    resource: &Value,
    path: &str,
    resolver: &Resolver<'_>,
    issues: &mut Vec<Issue>,
) -> Option<String> {
    let Some(requester) = resource.get("requester") else {
        if source.is_professional() {
            issues.push(
                Issue::error(
                    IssueCode::Required,
                    format!(
                        "a referral from {} must name its requester (the professional making it)",
                        describe(source.kind())
                    ),
                )
                .at(format!("{path}.requester")),
            );
        }
        return None;
    };
    if let Some(reference) = text(requester, "reference") {
        if let Some((target, _)) = resolver.resolve(reference) {
            // A resolved Practitioner or Organization: name it by its identifier.
            let identified = array(target, "identifier").find_map(|(_, identifier)| {
                Some(format!(
                    "{}|{}",
                    text(identifier, "system")?,
                    text(identifier, "value")?
                ))
            });
            return identified.or_else(|| Some(reference.to_owned()));
        }
        return Some(reference.to_owned());
    }
    requester
        .get("identifier")
        .and_then(|identifier| {
            Some(format!(
                "{}|{}",
                text(identifier, "system")?,
                text(identifier, "value")?
            ))
        })
        .or_else(|| text(requester, "display").map(str::to_owned))
}

fn describe(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Gp => "a GP practice",
        SourceKind::Hospital => "a hospital",
        SourceKind::ContactCentre => "the contact centre",
        SourceKind::Asc => "Adult Social Care",
        SourceKind::SelfReferral => "the person themselves",
        SourceKind::Org => "an organisation",
    }
}

/// Who the referral is for, and the Patient resource it resolved to.
fn subject<'a>(
    source: &Source,
    resource: &'a Value,
    path: &str,
    resolver: &Resolver<'a>,
    issues: &mut Vec<Issue>,
) -> (Option<Subject>, Option<(&'a Value, String)>) {
    let subject_path = format!("{path}.subject");
    let Some(subject) = resource.get("subject") else {
        issues.push(
            Issue::error(
                IssueCode::Required,
                "subject (who the referral is for) is required",
            )
            .at(subject_path),
        );
        return (None, None);
    };
    let before = issues.len();
    let mut nhs_number = None;
    if let Some(identifier) = subject.get("identifier") {
        if text(identifier, "system") == Some(NHS_NUMBER_SYSTEM) {
            nhs_number =
                check_nhs_number(identifier, &format!("{subject_path}.identifier"), issues);
        }
    }
    let patient = match text(subject, "reference") {
        Some(reference) => match resolver.resolve(reference) {
            Some((target, target_path))
                if crate::parse::resource_type(target) == Some("Patient") =>
            {
                match crate::parse::typed::<fhir_model::r4b::resources::Patient>(
                    target,
                    &target_path,
                ) {
                    Ok(_) => Some((target, target_path)),
                    Err(found) => {
                        issues.extend(found);
                        None
                    }
                }
            }
            Some((target, _)) => {
                issues.push(
                    Issue::error(
                        IssueCode::Value,
                        format!(
                            "the subject must be a Patient, not {}",
                            crate::parse::resource_type(target).unwrap_or("an untyped resource")
                        ),
                    )
                    .at(format!("{subject_path}.reference")),
                );
                None
            }
            None if subject.get("identifier").is_some() => None, // identified logically
            None => {
                issues.push(
                    Issue::error(
                        IssueCode::Value,
                        format!(
                            "the subject reference {reference:?} cannot be resolved: include the Patient in the \
                             Bundle or as a contained resource, or identify them with subject.identifier (NHS number)"
                        ),
                    )
                    .at(format!("{subject_path}.reference")),
                );
                None
            }
        },
        None => None,
    };
    if let Some((patient, patient_path)) = &patient {
        for (index, identifier) in array(patient, "identifier") {
            if text(identifier, "system") == Some(NHS_NUMBER_SYSTEM) {
                let found = check_nhs_number(
                    identifier,
                    &format!("{patient_path}.identifier[{index}]"),
                    issues,
                );
                if nhs_number.is_none() {
                    nhs_number = found;
                }
            }
        }
    }
    if issues.len() > before {
        return (None, patient);
    }

    let demographics = patient
        .as_ref()
        .map(|(patient, patient_path)| demographics(patient, patient_path));
    if nhs_number.is_none() {
        let may_go_without = matches!(
            source.kind(),
            SourceKind::SelfReferral | SourceKind::ContactCentre
        );
        if !may_go_without {
            issues.push(
                Issue::error(
                    IssueCode::Required,
                    format!(
                        "a referral from {} must identify the person by NHS number ({NHS_NUMBER_SYSTEM}) in \
                         subject.identifier or on the Patient",
                        describe(source.kind())
                    ),
                )
                .at(subject_path),
            );
            return (None, patient);
        }
        // Self-referrals and the contact centre may not know the NHS number; then the
        // Patient must say enough to find the person.
        match &demographics {
            None => {
                issues.push(
                    Issue::error(
                        IssueCode::Required,
                        "without an NHS number, the subject must be a Patient (contained or in the Bundle) with name, \
                         birth date and postcode",
                    )
                    .at(subject_path),
                );
                return (None, patient);
            }
            Some(found) => {
                for (missing, element) in [
                    (found.name.is_none(), "name"),
                    (found.birth_date.is_none(), "birthDate"),
                    (found.postcode.is_none(), "address.postalCode"),
                ] {
                    if missing {
                        issues.push(
                            Issue::error(
                                IssueCode::Required,
                                format!("without an NHS number, the Patient's {element} is required to identify them"),
                            )
                            .at(format!("{}.{element}", found.path)),
                        );
                    }
                }
            }
        }
    }
    if let Some(found) = &demographics {
        issues.extend(found.issues.iter().cloned());
    }
    if issues.len() > before {
        return (None, patient);
    }
    let subject = Subject {
        nhs_number,
        name: demographics.as_ref().and_then(|found| found.name.clone()),
        birth_date: demographics.as_ref().and_then(|found| found.birth_date),
        postcode: demographics
            .as_ref()
            .and_then(|found| found.postcode.clone()),
        language: demographics
            .as_ref()
            .and_then(|found| found.language.clone()),
    };
    (Some(subject), patient)
}

fn check_nhs_number(identifier: &Value, path: &str, issues: &mut Vec<Issue>) -> Option<NhsNumber> {
    let location = format!("{path}.value");
    match text(identifier, "value").map(NhsNumber::parse) {
        Some(Ok(number)) => Some(number),
        Some(Err(error)) => {
            issues.push(
                Issue::error(IssueCode::Value, format!("invalid NHS number: {error}")).at(location),
            );
            None
        }
        None => {
            issues.push(
                Issue::error(
                    IssueCode::Required,
                    "the NHS number identifier has no value",
                )
                .at(location),
            );
            None
        }
    }
}

struct Demographics {
    path: String,
    name: Option<PersonName>,
    birth_date: Option<NaiveDate>,
    postcode: Option<Postcode>,
    language: Option<String>,
    issues: Vec<Issue>,
}

fn demographics(patient: &Value, path: &str) -> Demographics {
    let mut issues = Vec::new();
    let name = array(patient, "name").find_map(|(_, name)| {
        let given: Vec<String> = array(name, "given")
            .filter_map(|(_, given)| given.as_str().map(str::to_owned))
            .collect();
        let family = text(name, "family").map(str::to_owned);
        (family.is_some() || !given.is_empty()).then_some(PersonName { given, family })
    });
    let birth_date = text(patient, "birthDate")
        .and_then(|text| NaiveDate::parse_from_str(text, "%Y-%m-%d").ok());
    let mut postcode = None;
    for (index, address) in array(patient, "address") {
        if let Some(text) = text(address, "postalCode") {
            match Postcode::parse(text) {
                Ok(parsed) => {
                    postcode.get_or_insert(parsed);
                }
                Err(error) => issues.push(
                    Issue::error(IssueCode::Value, error.to_string())
                        .at(format!("{path}.address[{index}].postalCode")),
                ),
            }
        }
    }
    let language = array(patient, "communication").find_map(|(_, communication)| {
        communication
            .get("language")
            .and_then(|language| codings(language).find_map(|(_, code)| code.map(str::to_owned)))
    });
    Demographics {
        path: path.to_owned(),
        name,
        birth_date,
        postcode,
        language,
        issues,
    }
}

fn asc_case_id(
    resource: &Value,
    path: &str,
    rules: &IntakeRules,
    issues: &mut Vec<Issue>,
) -> Option<AscCaseId> {
    let system = rules.asc_case_system();
    for (index, identifier) in array(resource, "identifier") {
        if text(identifier, "system") == Some(system.as_str()) {
            match text(identifier, "value").map(AscCaseId::parse) {
                Some(Ok(case_id)) => return Some(case_id),
                Some(Err(error)) => issues.push(
                    Issue::error(IssueCode::Value, error.to_string())
                        .at(format!("{path}.identifier[{index}].value")),
                ),
                None => {}
            }
        }
    }
    None
}

/// SHA-256 of the referral's content: the ServiceRequest and its Patient, without the
/// parts a resubmission may change without changing the referral (`id`, `meta`,
/// narrative `text`), with object keys sorted.
pub fn content_hash(service_request: &Value, patient: Option<&Value>) -> String {
    let mut hasher = Hashing(Sha256::new());
    write_canonical(&mut hasher, service_request, true);
    hasher.0.update([0u8]);
    if let Some(patient) = patient {
        write_canonical(&mut hasher, patient, true);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(64);
    for byte in hasher.0.finalize() {
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text
}

/// Feeds what is written straight into the hash: the canonical form is never built.
struct Hashing(Sha256);

impl std::io::Write for Hashing {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Compact JSON with object keys in byte order, leaving out `id`, `meta` and `text` at
/// the top level. serde_json's maps keep their keys in that order (its
/// `preserve_order` feature is off), so keys are written as they are iterated.
fn write_canonical(out: &mut Hashing, value: &Value, top_level: bool) {
    match value {
        Value::Object(fields) => {
            out.0.update(b"{");
            let mut first = true;
            for (key, field) in fields {
                if top_level && matches!(key.as_str(), "id" | "meta" | "text") {
                    continue;
                }
                if !first {
                    out.0.update(b",");
                }
                first = false;
                write_scalar(out, key);
                out.0.update(b":");
                write_canonical(out, field, false);
            }
            out.0.update(b"}");
        }
        Value::Array(items) => {
            out.0.update(b"[");
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.0.update(b",");
                }
                write_canonical(out, item, false);
            }
            out.0.update(b"]");
        }
        scalar => write_scalar(out, scalar),
    }
}

fn write_scalar<T: serde::Serialize + ?Sized>(out: &mut Hashing, scalar: &T) {
    // Writing into a hash cannot fail, and a string, number, boolean or null always
    // serialises.
    let _ = serde_json::to_writer(&mut *out, scalar);
}

pub(crate) fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

/// A string element of a resource.
pub fn text_of<'a>(resource: &'a Value, element: &str) -> Option<&'a str> {
    text(resource, element)
}

pub(crate) fn array<'a>(value: &'a Value, key: &str) -> impl Iterator<Item = (usize, &'a Value)> {
    value
        .get(key)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
}

/// (system, code) of every coding of a CodeableConcept.
pub(crate) fn codings(concept: &Value) -> impl Iterator<Item = (Option<&str>, Option<&str>)> {
    array(concept, "coding").map(|(_, coding)| (text(coding, "system"), text(coding, "code")))
}

#[cfg(test)]
mod tests;
