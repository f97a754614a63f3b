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

mod call_log;
mod fhir;
mod steps;
pub mod synthetic;

pub use steps::Step;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use linkwork_domain::{Need, NhsNumber};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

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

#[cfg(test)]
mod tests;
