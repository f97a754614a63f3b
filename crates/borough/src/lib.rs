//! The demo's synthetic borough, Linkwick (postcode area "LW", which does not exist):
//! GP practices, a hospital, the council contact centre, Adult Social Care with its
//! call log, another organisation, and people who refer themselves; the people they
//! refer, with needs, ages, areas, languages and consent choices; and what will happen
//! to each referral once a provider has it (accepted or not, contact, groups attended,
//! scores before and after).
//!
//! Deterministic given the seed and the chapter (which run of the demo tells it: a
//! later run goes on after the people and the days of the runs before it, with people
//! of its own). Every identifier is invented: NHS numbers come from
//! the never-issued 999 range (valid Modulus 11), names from short lists of common
//! words, addresses from invented streets in LW postcodes. The plan is turned into
//! real FHIR here (ServiceRequest, BaRS message, batch Bundle) and driven through the
//! real interfaces by `demo`.

pub mod synthetic;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use linkwork_domain::{Need, NhsNumber};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// How a referral reaches linkwork.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    /// `POST /fhir/ServiceRequest`.
    ServiceRequest,
    /// `POST /fhir/$process-message` (NHS BaRS).
    Bars,
    /// One entry of a `POST /fhir` batch Bundle.
    Batch,
    /// Raw FHIR on `referrals.inbound`.
    Inbound,
}

/// A person in the borough.
#[derive(Debug, Clone, PartialEq)]
pub struct Person {
    pub nhs_number: NhsNumber,
    pub given: &'static str,
    pub family: &'static str,
    pub birth_date: NaiveDate,
    pub postcode: String,
    pub street: String,
    pub language: &'static str,
    /// ASC's own person id, for people ASC knows.
    pub asc_person_id: Option<String>,
}

/// What the provider holding a referral does with it.
#[derive(Debug, Clone, PartialEq)]
pub enum Fate {
    /// The first provider rejects it (full, or not the right service); whoever gets it
    /// next follows `then`.
    RejectedFirst {
        reason: &'static str,
        then: Box<Fate>,
    },
    /// Nobody answers: the acceptance deadline passes and the router re-routes.
    NoAnswer,
    /// Accepted; the person is contacted, may take part, and completes or drops out.
    Supported(Support),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Support {
    pub contact_after_days: u32,
    pub consent: bool,
    /// UCLA-3 (3-9, lower is better) at baseline and follow-up.
    pub ucla: (u8, u8),
    /// SWEMWBS (7-35, higher is better).
    pub swemwbs: (u8, u8),
    pub activities: Vec<(&'static str, &'static str)>,
    /// `false`: stops engaging (the Task fails with a reason).
    pub completes: bool,
    /// The provider answers over `provider.responses` rather than HTTP.
    pub over_kafka: bool,
}

/// One referral the borough will make.
#[derive(Debug, Clone, PartialEq)]
pub struct Referral {
    /// The person's place in `Borough::people`.
    pub person: usize,
    /// The sending system (`gp:<ODS>`, `hospital:<ODS>`, `contact-centre`, `asc`,
    /// `org:<name>`, `self`).
    pub source: String,
    pub channel: Channel,
    /// The sender's own identifier for it.
    pub reference: String,
    pub needs: Vec<Need>,
    /// Days after the start of the story.
    pub day: u32,
    /// For ASC diversions: the call-log case it diverts.
    pub asc_case: Option<String>,
    pub fate: Fate,
}

/// Which part of the story a run of the demo tells. The first run starts on 2 June
/// 2025 with person 0; a later one starts where the run before it stopped its clock,
/// with the people after that run's, so no NHS number, referral identifier or ASC id
/// is used twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chapter {
    /// The run's number, from 1.
    pub number: u32,
    /// The borough's number for the run's first person.
    pub first_person: usize,
    /// The story's first day (09:00).
    pub start: DateTime<Utc>,
}

impl Chapter {
    /// The story's beginning.
    pub fn first() -> Self {
        Self {
            number: 1,
            first_person: 0,
            start: Utc
                .with_ymd_and_hms(2025, 6, 2, 9, 0, 0)
                .single()
                .unwrap_or_default(),
        }
    }

    /// A generator for this chapter: the first chapter's is the seed's own stream (so
    /// it tells the story it always told), a later chapter's another stream.
    fn rng(&self, seed: u64) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(u64::from(self.number.saturating_sub(1)));
        rng
    }
}

/// The whole borough.
#[derive(Debug, Clone)]
pub struct Borough {
    pub seed: u64,
    pub chapter: Chapter,
    pub start: DateTime<Utc>,
    pub people: Vec<Person>,
    pub referrals: Vec<Referral>,
}

const GIVEN: [&str; 24] = [
    "Ada", "Bryn", "Cora", "Dev", "Edie", "Farid", "Gwen", "Hal", "Ines", "Jonah", "Kiran", "Lena",
    "Milo", "Nia", "Otto", "Priya", "Quinn", "Rosa", "Sami", "Tess", "Umar", "Vera", "Wyn",
    "Zofia",
];
const FAMILY: [&str; 20] = [
    "Ashdown",
    "Brightwater",
    "Coldharbour",
    "Dunmore",
    "Elmstead",
    "Fairweather",
    "Greenslade",
    "Hollowell",
    "Ironside",
    "Juniper",
    "Kettlewell",
    "Larkspur",
    "Mossfield",
    "Northcote",
    "Oakenshaw",
    "Pennyworth",
    "Quarrydale",
    "Rookwood",
    "Stonebridge",
    "Thistlewood",
];
const STREETS: [&str; 12] = [
    "Invented Row",
    "Mill Lane",
    "Canal Side",
    "Chapel Walk",
    "Weavers Yard",
    "Orchard Close",
    "Station Terrace",
    "Beck Road",
    "Quarry Hill",
    "Foundry Street",
    "Willow Court",
    "Market Place",
];
const GROUPS: [(&str, &str); 8] = [
    ("millbrook-walking-group", "group"),
    ("linkwick-lunch-club", "group"),
    ("knit-and-natter", "group"),
    ("mens-shed", "group"),
    ("digital-drop-in", "group"),
    ("community-choir", "group"),
    ("befriending-calls", "befriending"),
    ("library-volunteers", "volunteering"),
];
/// Invented ODS-style codes for the borough's practices and hospital.
const PRACTICES: [&str; 5] = ["LWP001", "LWP002", "LWP003", "LWP004", "LWP005"];
const HOSPITAL: &str = "hospital:LWH01";
const ORGANISATION: &str = "org:linkwick-age-concern";
/// Needs people bring, weighted towards loneliness and isolation.
const NEEDS: [(Need, u32); 8] = [
    (Need::Loneliness, 30),
    (Need::SocialIsolation, 25),
    (Need::Bereavement, 8),
    (Need::Retirement, 6),
    (Need::Relocation, 5),
    (Need::LongTermCondition, 10),
    (Need::DigitalExclusion, 6),
    (Need::LowMoodAnxiety, 10),
];

/// The identifier system of a borough sender's own referral identifiers.
pub fn reference_system(source: &str) -> String {
    format!(
        "https://{}.linkwick.example/referrals",
        source.replace(':', "-")
    )
}

/// Every borough sender's identifier system, as an SQL `LIKE` pattern.
pub const REFERENCE_SYSTEMS: &str = "https://%.linkwick.example/referrals";

/// A valid NHS number in the never-issued 999 range, one per person: the first valid
/// stem from `index * 11` on (about one stem in eleven has no check digit, so the
/// eleven stems each person owns always hold one, and no two people share).
fn nhs_number(index: usize) -> NhsNumber {
    (0..11)
        .find_map(|bump| {
            let mut rest = index * 11 + bump;
            let mut stem = [9u8, 9, 9, 0, 0, 0, 0, 0, 0];
            for digit in stem[3..].iter_mut().rev() {
                *digit = (rest % 10) as u8;
                rest /= 10;
            }
            NhsNumber::from_first_nine(stem)
        })
        .unwrap_or_else(|| unreachable!("eleven consecutive stems hold a valid one"))
}

fn pick_need(rng: &mut ChaCha8Rng) -> Need {
    let total: u32 = NEEDS.iter().map(|(_, weight)| weight).sum();
    let mut roll = rng.random_range(0..total);
    for (need, weight) in NEEDS {
        if roll < weight {
            return need;
        }
        roll -= weight;
    }
    Need::Loneliness
}

fn support(rng: &mut ChaCha8Rng, over_kafka: bool) -> Support {
    let ucla_before = rng.random_range(6..=9u8);
    let swemwbs_before = rng.random_range(12..=22u8);
    // Most feel better; some do not.
    let improves = rng.random::<f64>() < 0.72;
    let ucla_after = if improves {
        ucla_before.saturating_sub(rng.random_range(1..=3)).max(3)
    } else {
        (ucla_before + rng.random_range(0..=1)).min(9)
    };
    let swemwbs_after = if improves {
        (swemwbs_before + rng.random_range(2..=8)).min(35)
    } else {
        swemwbs_before
            .saturating_sub(rng.random_range(0..=2))
            .max(7)
    };
    let count = rng.random_range(0..=3usize);
    let mut activities = Vec::with_capacity(count);
    for _ in 0..count {
        let group = GROUPS[rng.random_range(0..GROUPS.len())];
        if !activities.contains(&group) {
            activities.push(group);
        }
    }
    Support {
        contact_after_days: rng.random_range(1..=12),
        consent: rng.random::<f64>() < 0.7,
        ucla: (ucla_before, ucla_after),
        swemwbs: (swemwbs_before, swemwbs_after),
        activities,
        completes: rng.random::<f64>() < 0.85,
        over_kafka,
    }
}

fn fate(rng: &mut ChaCha8Rng) -> Fate {
    let over_kafka = rng.random::<f64>() < 0.3;
    match rng.random_range(0..100) {
        0..10 => Fate::RejectedFirst {
            reason: if rng.random::<bool>() {
                "caseload full this month"
            } else {
                "needs are better met by another service"
            },
            then: Box::new(Fate::Supported(support(rng, over_kafka))),
        },
        10..15 => Fate::NoAnswer,
        _ => Fate::Supported(support(rng, over_kafka)),
    }
}

/// Builds the borough's first chapter: `people` people and about one referral each
/// over `days`.
pub fn borough(seed: u64, people: usize, days: u32) -> Borough {
    chapter(seed, people, days, Chapter::first())
}

/// Builds one chapter of the borough: `people` new people, numbered from the
/// chapter's first, and about one referral each over `days` from its start.
pub fn chapter(seed: u64, people: usize, days: u32, chapter: Chapter) -> Borough {
    let mut rng = chapter.rng(seed);
    let start = chapter.start;
    let people: Vec<Person> = (chapter.first_person..chapter.first_person + people)
        .map(|index| {
            let age = rng.random_range(19..=92i32);
            let birth_year = 2026 - age;
            let district = rng.random_range(1..=6);
            Person {
                nhs_number: nhs_number(index),
                given: GIVEN[rng.random_range(0..GIVEN.len())],
                family: FAMILY[rng.random_range(0..FAMILY.len())],
                birth_date: NaiveDate::from_ymd_opt(
                    birth_year,
                    rng.random_range(1..=12),
                    rng.random_range(1..=28),
                )
                .unwrap_or_default(),
                postcode: format!(
                    "LW{district} {}{}{}",
                    rng.random_range(1..=9),
                    (b'A' + rng.random_range(0..26u8)) as char,
                    (b'A' + rng.random_range(0..26u8)) as char
                ),
                street: format!(
                    "{} {}",
                    rng.random_range(1..=120),
                    STREETS[rng.random_range(0..STREETS.len())]
                ),
                language: match rng.random_range(0..20) {
                    0 => "pa",
                    1 => "ur",
                    2 => "pl",
                    _ => "en",
                },
                asc_person_id: (rng.random::<f64>() < 0.3)
                    .then(|| format!("LWASC{seed}-{index:05}")),
            }
        })
        .collect();

    let mut referrals = Vec::with_capacity(people.len());
    for (position, person) in people.iter().enumerate() {
        // The borough's number for the person, which their identifiers carry.
        let index = chapter.first_person + position;
        let day = rng.random_range(0..days.max(1));
        // Early referrals from GPs, hospital teams and other organisations, ASC
        // diversions for people ASC knows, and people who refer themselves.
        let (source, channel) = match (person.asc_person_id.is_some(), rng.random_range(0..100)) {
            (true, 0..60) => ("asc".to_owned(), Channel::ServiceRequest),
            (_, 0..45) => (
                format!("gp:{}", PRACTICES[rng.random_range(0..PRACTICES.len())]),
                if rng.random::<bool>() {
                    Channel::ServiceRequest
                } else {
                    Channel::Batch
                },
            ),
            (_, 45..60) => (HOSPITAL.to_owned(), Channel::Bars),
            (_, 60..75) => ("contact-centre".to_owned(), Channel::ServiceRequest),
            (_, 75..88) => (ORGANISATION.to_owned(), Channel::Inbound),
            _ => ("self".to_owned(), Channel::ServiceRequest),
        };
        let mut needs = vec![pick_need(&mut rng)];
        if rng.random::<f64>() < 0.3 {
            let second = pick_need(&mut rng);
            if !needs.contains(&second) {
                needs.push(second);
            }
        }
        let asc_case = (source == "asc").then(|| format!("LWC{seed}-{index:05}"));
        referrals.push(Referral {
            person: position,
            reference: format!("LW{seed}-{index:05}"),
            source,
            channel,
            needs,
            day,
            asc_case,
            fate: fate(&mut rng),
        });
    }
    referrals.sort_by_key(|referral| (referral.day, referral.person));
    Borough {
        seed,
        chapter,
        start,
        people,
        referrals,
    }
}

impl Borough {
    /// When a referral is written (its `authoredOn`).
    pub fn authored(&self, referral: &Referral) -> DateTime<Utc> {
        self.start + Duration::days(i64::from(referral.day))
    }

    /// The referral as a FHIR R4 ServiceRequest with the person as a contained
    /// Patient (the self-referral and contact-centre rules need name, birth date and
    /// postcode; professional sources also name a requester).
    pub fn service_request(&self, referral: &Referral, canonical_base: &str) -> Value {
        let person = &self.people[referral.person];
        let reasons: Vec<Value> = referral
            .needs
            .iter()
            .map(|need| {
                json!({ "coding": [{ "system": format!("{canonical_base}/CodeSystem/need"), "code": need.code() }] })
            })
            .collect();
        let mut identifiers = vec![json!({
            "system": reference_system(&referral.source),
            "value": referral.reference,
        })];
        if let Some(case) = &referral.asc_case {
            identifiers
                .push(json!({ "system": format!("{canonical_base}/Id/asc-case"), "value": case }));
        }
        let mut request = json!({
            "resourceType": "ServiceRequest",
            "identifier": identifiers,
            "contained": [{
                "resourceType": "Patient",
                "id": "patient",
                "identifier": [{ "system": "https://fhir.nhs.uk/Id/nhs-number", "value": person.nhs_number.to_string() }],
                "name": [{ "family": person.family, "given": [person.given] }],
                "birthDate": person.birth_date.to_string(),
                "address": [{ "line": [person.street], "city": "Linkwick", "postalCode": person.postcode }],
                "communication": [{ "language": { "coding": [{ "system": "urn:ietf:bcp:47", "code": person.language }] }, "preferred": true }],
            }],
            "status": "active",
            "intent": "order",
            "priority": "routine",
            "code": { "coding": [{ "system": "http://snomed.info/sct", "code": "871731000000106", "display": "Referral to social prescribing service" }] },
            "reasonCode": reasons,
            "subject": { "reference": "#patient" },
            "authoredOn": self.authored(referral).to_rfc3339(),
        });
        if referral.source != "self" {
            request["requester"] = json!({ "display": requester(&referral.source) });
        }
        request
    }
}

impl Borough {
    /// The referral as an NHS BaRS `servicerequest-request` message to linkwork's
    /// router, the Patient a separate entry referenced by `urn:uuid:`.
    pub fn bars_message(&self, referral: &Referral, canonical_base: &str) -> Value {
        let mut request = self.service_request(referral, canonical_base);
        let patient = request["contained"][0].clone();
        let id = |part: &str| {
            uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_URL,
                format!("linkwick/{}/{part}", referral.reference).as_bytes(),
            )
        };
        let (header, request_url, patient_url) = (id("header"), id("request"), id("patient"));
        if let Some(fields) = request.as_object_mut() {
            fields.remove("contained");
            fields.insert(
                "subject".into(),
                json!({ "reference": format!("urn:uuid:{patient_url}") }),
            );
            fields.insert("intent".into(), json!("plan"));
        }
        let mut patient = patient;
        if let Some(fields) = patient.as_object_mut() {
            fields.remove("id");
        }
        let at = self.authored(referral).to_rfc3339();
        json!({
            "resourceType": "Bundle",
            "id": id("bundle").to_string(),
            "meta": { "lastUpdated": at, "profile": ["https://fhir.nhs.uk/StructureDefinition/BARSBundleMessage"] },
            "type": "message",
            "timestamp": at,
            "entry": [
                { "fullUrl": format!("urn:uuid:{header}"), "resource": {
                    "resourceType": "MessageHeader",
                    "eventCoding": { "system": "https://fhir.nhs.uk/CodeSystem/message-events-bars", "code": "servicerequest-request" },
                    "destination": [{ "endpoint": format!("{canonical_base}/Id/service|router") }],
                    "source": { "name": "Linkwick General Hospital", "endpoint": "https://linkwick-general.example/bars" },
                    "reason": { "coding": [{ "system": "https://fhir.nhs.uk/CodeSystem/message-reason-bars", "code": "new" }] },
                    "focus": [{ "reference": format!("urn:uuid:{request_url}") }],
                }},
                { "fullUrl": format!("urn:uuid:{request_url}"), "resource": request },
                { "fullUrl": format!("urn:uuid:{patient_url}"), "resource": patient },
            ],
        })
    }

    /// Referrals from one practice as a `batch` Bundle of POSTs.
    pub fn batch_bundle(&self, referrals: &[&Referral], canonical_base: &str) -> Value {
        let entries: Vec<Value> = referrals
            .iter()
            .map(|referral| {
                json!({
                    "resource": self.service_request(referral, canonical_base),
                    "request": { "method": "POST", "url": "ServiceRequest" },
                })
            })
            .collect();
        json!({ "resourceType": "Bundle", "type": "batch", "entry": entries })
    }
}

impl Borough {
    /// ASC's call-log export for the story, as the CSV ASC would send
    /// (`case_id,person_id,opened_at,closed_at,closure_reason`): the synthetic call log
    /// of the seed evaluation (920 open cases falling as connectors take diversions),
    /// plus a case for each ASC referral, opened some days before and closed as
    /// diverted to community on the day of the referral; about one diverted person in
    /// seven comes back with a new case, within 90 days or later. A later chapter's
    /// export holds only its own diversions: the seed evaluation's log is on the log
    /// already.
    pub fn call_log_csv(&self) -> String {
        let mut rng = self.chapter.rng(self.seed ^ 0x0ca1_110c);
        let mut csv = String::from("case_id,person_id,opened_at,closed_at,closure_reason\n");
        if self.chapter.number == 1 {
            self.push_seed_evaluation_log(&mut csv);
        }
        for referral in &self.referrals {
            let (Some(case), Some(person)) = (
                &referral.asc_case,
                self.people[referral.person].asc_person_id.as_ref(),
            ) else {
                continue;
            };
            let diverted = self.authored(referral);
            let opened = diverted - Duration::days(rng.random_range(3..40));
            csv.push_str(&format!(
                "{case},{person},{},{},diverted-to-community\n",
                opened.to_rfc3339(),
                diverted.to_rfc3339()
            ));
            if rng.random::<f64>() < 0.15 {
                let back = diverted + Duration::days(rng.random_range(20..150));
                let closed = back + Duration::days(rng.random_range(5..40));
                csv.push_str(&format!(
                    "{case}-R,{person},{},{},assessed\n",
                    back.to_rfc3339(),
                    closed.to_rfc3339()
                ));
            }
        }
        csv
    }

    /// The synthetic call log of the seed evaluation, as CSV rows.
    fn push_seed_evaluation_log(&self, csv: &mut String) {
        let log = crate::synthetic::call_log(self.seed);
        let mut closures = std::collections::HashMap::new();
        for event in &log.events {
            if let linkwork_domain::CallLogEvent::CaseClosed(closed) = event {
                closures.insert(closed.case_id.clone(), (closed.closed_at, closed.reason));
            }
        }
        for event in &log.events {
            if let linkwork_domain::CallLogEvent::CaseOpened(opened) = event {
                let (closed_at, reason) = closures
                    .get(&opened.case_id)
                    .map(|(at, reason)| (at.to_rfc3339(), reason.code().to_owned()))
                    .unwrap_or_default();
                csv.push_str(&format!(
                    "{},,{},{closed_at},{reason}\n",
                    opened.case_id,
                    opened.opened_at.to_rfc3339()
                ));
            }
        }
    }
}

/// One thing a provider does for a referral it holds, `after_days` after it arrived.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    pub after_days: u32,
    /// A FHIR resource as a provider sends it: a Task (`PUT /fhir/Task/{id}` or on
    /// `provider.responses`), or an Observation, Communication, Procedure or Consent
    /// (`POST`, or on `provider.responses`).
    pub resource: Value,
}

impl Support {
    /// The provider's steps for a referral it accepts, through to completion or the
    /// person stopping, dated from `arrived`.
    pub fn steps(
        &self,
        referral_id: &str,
        task_id: &str,
        patient_id: &str,
        arrived: DateTime<Utc>,
        canonical_base: &str,
    ) -> Vec<Step> {
        let at = |days: u32| (arrived + Duration::days(i64::from(days))).to_rfc3339();
        let based_on = json!([{ "reference": format!("ServiceRequest/{referral_id}") }]);
        let task = |status: &str, reason: Option<&str>| {
            let mut task = json!({
                "resourceType": "Task",
                "id": task_id,
                "status": status,
                "intent": "order",
                "focus": { "reference": format!("ServiceRequest/{referral_id}") },
            });
            if let Some(reason) = reason {
                task["statusReason"] = json!({ "text": reason });
            }
            task
        };
        let score = |code: &str, snomed: Option<&str>, value: u8, timepoint: &str, days: u32| {
            let mut coding = vec![
                json!({ "system": format!("{canonical_base}/CodeSystem/outcome-instrument"), "code": code }),
            ];
            if let Some(snomed) = snomed {
                coding.push(json!({ "system": "http://snomed.info/sct", "code": snomed }));
            }
            json!({
                "resourceType": "Observation",
                "status": "final",
                "category": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey" }] }],
                "code": { "coding": coding },
                "basedOn": based_on,
                "effectiveDateTime": at(days),
                "valueInteger": value,
                "extension": [{ "url": format!("{canonical_base}/StructureDefinition/outcome-timepoint"), "valueCode": timepoint }],
            })
        };
        let first = self.contact_after_days;
        let mut steps = vec![Step {
            after_days: 1,
            resource: task("accepted", None),
        }];
        if self.consent {
            steps.push(Step {
                after_days: first,
                resource: json!({
                    "resourceType": "Consent",
                    "status": "active",
                    "scope": { "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "research" }] },
                    "category": [{ "coding": [{ "system": "http://loinc.org", "code": "59284-0" }] }],
                    "provision": { "data": [{ "meaning": "related", "reference": { "reference": format!("ServiceRequest/{referral_id}") } }] },
                }),
            });
        }
        steps.push(Step {
            after_days: first,
            resource: json!({
                "resourceType": "Communication",
                "status": "completed",
                "basedOn": based_on,
                "sent": at(first),
                "medium": [{ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationMode", "code": "PHONE" }] }],
            }),
        });
        steps.push(Step {
            after_days: first,
            resource: score("ucla-3", None, self.ucla.0, "baseline", first),
        });
        steps.push(Step {
            after_days: first,
            resource: score(
                "swemwbs",
                Some("718466001"),
                self.swemwbs.0,
                "baseline",
                first,
            ),
        });
        steps.push(Step {
            after_days: first + 1,
            resource: task("in-progress", None),
        });
        let stops = first + 30;
        for (index, (activity, kind)) in self.activities.iter().enumerate() {
            let days = first + 7 + 14 * index as u32;
            if !self.completes && days >= stops {
                break;
            }
            steps.push(Step {
                after_days: days,
                resource: json!({
                    "resourceType": "Procedure",
                    "status": "completed",
                    "basedOn": based_on,
                    "subject": { "reference": format!("Patient/{patient_id}") },
                    "category": { "coding": [{ "system": format!("{canonical_base}/CodeSystem/activity-kind"), "code": kind }] },
                    "code": { "text": activity.replace('-', " ") },
                    "performedDateTime": at(days),
                }),
            });
        }
        if self.completes {
            let follow_up = first + 84;
            steps.push(Step {
                after_days: follow_up,
                resource: score("ucla-3", None, self.ucla.1, "follow-up", follow_up),
            });
            steps.push(Step {
                after_days: follow_up,
                resource: score(
                    "swemwbs",
                    Some("718466001"),
                    self.swemwbs.1,
                    "follow-up",
                    follow_up,
                ),
            });
            steps.push(Step {
                after_days: follow_up + 1,
                resource: task("completed", None),
            });
        } else {
            steps.push(Step {
                after_days: stops,
                resource: task(
                    "failed",
                    Some("stopped engaging after several attempts to contact"),
                ),
            });
        }
        // In the order they happen (same-day steps keep the order written).
        steps.sort_by_key(|step| step.after_days);
        steps
    }
}

fn requester(source: &str) -> String {
    match source.split(':').next() {
        Some("gp") => format!(
            "Social prescribing link worker, {}",
            source.trim_start_matches("gp:")
        ),
        Some("hospital") => "Discharge team, Linkwick General Hospital".to_owned(),
        Some("asc") => "Adult Social Care duty team".to_owned(),
        Some("contact-centre") => "Linkwick Council contact centre".to_owned(),
        _ => "Linkwick Age Concern".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_same_seed_gives_the_same_borough() {
        let one = borough(7, 200, 500);
        let two = borough(7, 200, 500);
        assert_eq!(one.people, two.people);
        assert_eq!(one.referrals, two.referrals);
        assert_ne!(borough(8, 200, 500).people, one.people);
    }

    #[test]
    fn a_later_chapter_has_people_and_identifiers_of_its_own_from_its_own_first_day() {
        let first = borough(7, 200, 300);
        assert_eq!(
            first.referrals,
            chapter(7, 200, 300, Chapter::first()).referrals
        );
        let next = Chapter {
            number: 2,
            first_person: 200,
            start: first.start + Duration::days(420),
        };
        let second = chapter(7, 150, 300, next);
        assert_eq!(second.referrals, chapter(7, 150, 300, next).referrals);
        assert_eq!(second.people.len(), 150);
        let numbers: HashSet<String> = first
            .people
            .iter()
            .map(|person| person.nhs_number.to_string())
            .collect();
        assert!(second
            .people
            .iter()
            .all(|person| !numbers.contains(&person.nhs_number.to_string())));
        let identifiers = |town: &Borough| -> HashSet<String> {
            town.referrals
                .iter()
                .flat_map(|referral| {
                    let person = &town.people[referral.person];
                    [
                        Some(referral.reference.clone()),
                        referral.asc_case.clone(),
                        person.asc_person_id.clone(),
                    ]
                })
                .flatten()
                .collect()
        };
        assert!(identifiers(&first).is_disjoint(&identifiers(&second)));
        assert!(second
            .referrals
            .iter()
            .all(|referral| second.authored(referral) >= next.start));
        // Its call log holds its own diversions only, not the seed evaluation's again.
        let csv = second.call_log_csv();
        assert!(
            csv.lines().skip(1).all(|line| line.starts_with("LWC7-")),
            "{csv}"
        );
        assert!(csv.lines().count() > 1);
    }

    #[test]
    fn nhs_numbers_are_synthetic_valid_and_unique() {
        let town = borough(7, 500, 500);
        let mut seen = HashSet::new();
        for person in &town.people {
            let number = person.nhs_number.to_string();
            assert!(person.nhs_number.is_test_range(), "{number}");
            assert!(NhsNumber::parse(&number).is_ok(), "{number}");
            assert!(seen.insert(number.clone()), "{number} twice");
        }
    }

    #[test]
    fn every_kind_of_source_and_channel_and_fate_appears() {
        let town = borough(7, 400, 500);
        let kinds: HashSet<&str> = town
            .referrals
            .iter()
            .map(|referral| referral.source.split(':').next().unwrap_or(""))
            .collect();
        for kind in ["gp", "hospital", "contact-centre", "asc", "org", "self"] {
            assert!(kinds.contains(kind), "{kind}");
        }
        for channel in [
            Channel::ServiceRequest,
            Channel::Bars,
            Channel::Batch,
            Channel::Inbound,
        ] {
            assert!(
                town.referrals.iter().any(|r| r.channel == channel),
                "{channel:?}"
            );
        }
        assert!(town
            .referrals
            .iter()
            .any(|r| matches!(r.fate, Fate::NoAnswer)));
        assert!(town
            .referrals
            .iter()
            .any(|r| matches!(r.fate, Fate::RejectedFirst { .. })));
        assert!(town
            .referrals
            .iter()
            .all(|r| (r.source == "asc") == r.asc_case.is_some()));
    }

    #[test]
    fn bars_messages_and_batches_read_as_the_real_intake_reads_them() {
        let town = borough(7, 200, 500);
        let base = "https://linkwork.example/fhir";
        let hospital = town
            .referrals
            .iter()
            .find(|r| r.channel == Channel::Bars)
            .unwrap();
        let message = town.bars_message(hospital, base);
        let read =
            linkwork_fhir::message::read(&message).unwrap_or_else(|issues| panic!("{issues:?}"));
        assert_eq!(read.reason, linkwork_fhir::message::MessageReason::New);
        let batch: Vec<&Referral> = town
            .referrals
            .iter()
            .filter(|r| r.channel == Channel::Batch)
            .take(5)
            .collect();
        let bundle = town.batch_bundle(&batch, base);
        let read =
            linkwork_fhir::batch::read(&bundle).unwrap_or_else(|issues| panic!("{issues:?}"));
        assert_eq!(read.entries.len(), 5);
        assert!(read
            .entries
            .iter()
            .all(|entry| matches!(entry, linkwork_fhir::batch::Entry::Referral { .. })));
    }

    #[test]
    fn a_providers_steps_are_what_the_provider_api_takes() {
        let town = borough(7, 300, 500);
        let provider = linkwork_domain::ProviderId::parse("millbrook-connectors").unwrap();
        let base = "https://linkwork.example/fhir";
        let mut checked = 0;
        for referral in &town.referrals {
            let support = match &referral.fate {
                Fate::Supported(support) => support,
                Fate::RejectedFirst { then, .. } => match then.as_ref() {
                    Fate::Supported(support) => support,
                    _ => continue,
                },
                Fate::NoAnswer => continue,
            };
            let id = linkwork_domain::ReferralId::from_uuid(uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_URL,
                referral.reference.as_bytes(),
            ));
            let task = id.task_id(1).to_string();
            let steps = support.steps(
                &id.to_string(),
                &task,
                &id.patient_id().to_string(),
                town.authored(referral),
                base,
            );
            let mut last = 0;
            for step in &steps {
                assert!(step.after_days >= last, "steps are in order");
                last = step.after_days;
                linkwork_fhir::provider::parse(&step.resource, &provider, None, base, Utc::now())
                    .unwrap_or_else(|issues| panic!("{issues:?} in {}", step.resource));
            }
            assert_eq!(
                steps.last().unwrap().resource["status"],
                if support.completes {
                    "completed"
                } else {
                    "failed"
                }
            );
            checked += 1;
        }
        assert!(checked > 200);
    }

    #[test]
    fn a_referral_is_a_service_request_linkwork_takes() {
        let town = borough(7, 50, 500);
        let rules = linkwork_fhir::IntakeRules::default();
        for referral in &town.referrals {
            let resource = town.service_request(referral, &rules.canonical_base);
            let source = linkwork_domain::Source::parse(&referral.source).unwrap();
            let located = linkwork_fhir::Located {
                resource: &resource,
                path: "ServiceRequest".into(),
                fallback_identifier: None,
            };
            let resolver =
                linkwork_fhir::Resolver::new().with_contained(&resource, "ServiceRequest");
            linkwork_fhir::parse::typed::<linkwork_fhir::fhir_model::r4b::resources::ServiceRequest>(&resource, "ServiceRequest")
                .unwrap_or_else(|issues| panic!("{issues:?}"));
            linkwork_fhir::referral::validate(
                &source,
                &located,
                &resolver,
                &rules,
                town.authored(referral) + Duration::days(1),
            )
            .unwrap_or_else(|issues| {
                panic!(
                    "{} from {}: {issues:?}",
                    referral.reference, referral.source
                )
            });
        }
    }
}
