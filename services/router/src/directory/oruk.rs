//! Open Referral UK (HSDS UK profile) service records into directory providers.
//!
//! ORUK describes a service for people (what, where, for whom, in which languages); it
//! has no words for linkwork's routing facts (needs taxonomy, need versus want,
//! caseload capacity, acceptance deadline). The import maps what ORUK does say and
//! fills the rest from [`ImportDefaults`], reporting every guess and every gap so
//! an operator can finish the entry in YAML:
//! - needs and kind are inferred from the name, description and taxonomy terms by
//!   keyword, each inference reported with the word that triggered it;
//! - areas come from UK postcodes of the service's locations (their districts) and
//!   from postcode districts or GSS codes written in `service_areas`; free-text areas
//!   ("all residents of MyCity") cannot be matched and are reported;
//! - languages from `languages[].code` (or `name` for English), English otherwise.
//!
//! Accepted input: one service object, an array of them, or an ORUK API page
//! (`{"content": [...]}`).

use linkwork_domain::{Need, Postcode, ProviderId};
use serde_json::Value;

use super::{normalise_area_postcode, AgeRange, Areas, DirectoryDocument, Provider, ProviderKind};

/// What ORUK cannot say, supplied by the operator.
#[derive(Debug, Clone)]
pub struct ImportDefaults {
    pub capacity: u32,
    pub accept_within_working_days: u32,
    /// Areas to add to every imported provider (districts, sectors or place codes).
    pub areas: Vec<String>,
    pub accepts_self_referrals: bool,
}

impl Default for ImportDefaults {
    fn default() -> Self {
        Self {
            capacity: 20,
            accept_within_working_days: 5,
            areas: Vec::new(),
            accepts_self_referrals: false,
        }
    }
}

/// One imported service and what the operator should know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Imported {
    pub provider: Provider,
    pub notes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    #[error("not Open Referral UK JSON: {0}")]
    NotOruk(String),
    #[error("service {index}: {reason}")]
    Service { index: usize, reason: String },
}

/// Keyword → need. Matched case-insensitively against name, description and
/// taxonomy terms.
const NEED_KEYWORDS: &[(&str, Need)] = &[
    ("lonel", Need::Loneliness),
    ("befriend", Need::Loneliness),
    ("isolat", Need::SocialIsolation),
    ("anxiety", Need::LowMoodAnxiety),
    ("depression", Need::LowMoodAnxiety),
    ("low mood", Need::LowMoodAnxiety),
    ("mental health", Need::LowMoodAnxiety),
    ("counselling", Need::LowMoodAnxiety),
    ("bereave", Need::Bereavement),
    ("grief", Need::Bereavement),
    ("retire", Need::Retirement),
    ("moved to the area", Need::Relocation),
    ("new to the area", Need::Relocation),
    ("long-term condition", Need::LongTermCondition),
    ("long term condition", Need::LongTermCondition),
    ("chronic", Need::LongTermCondition),
    ("carer", Need::Caring),
    ("debt", Need::MoneyWorries),
    ("money", Need::MoneyWorries),
    ("benefits", Need::MoneyWorries),
    ("financial", Need::MoneyWorries),
    ("digital", Need::DigitalExclusion),
    ("computer", Need::DigitalExclusion),
];

/// Words that mark a service for a pressing need rather than an activity.
const NEED_SERVICE_KEYWORDS: &[&str] = &[
    "counselling",
    "therapy",
    "therapist",
    "advice",
    "advocacy",
    "carers",
];

/// Reads ORUK JSON and maps each service.
pub fn import(json: &Value, defaults: &ImportDefaults) -> Result<Vec<Imported>, ImportError> {
    let services: Vec<&Value> = match json {
        Value::Array(items) => items.iter().collect(),
        Value::Object(object) if object.get("content").is_some_and(Value::is_array) => {
            object["content"].as_array().into_iter().flatten().collect()
        }
        Value::Object(_) => vec![json],
        _ => {
            return Err(ImportError::NotOruk(
                "expected a service object, an array of services or a page with content".into(),
            ))
        }
    };
    services
        .into_iter()
        .enumerate()
        .map(|(index, service)| {
            map_service(service, defaults).map_err(|reason| ImportError::Service { index, reason })
        })
        .collect()
}

/// Imports into `document`: a service already imported (same ORUK id) keeps its
/// directory id and is replaced; a new one is added.
pub fn merge(document: &mut DirectoryDocument, imported: Vec<Imported>) -> Vec<Imported> {
    imported
        .into_iter()
        .map(|mut each| {
            if let Some(existing) = document
                .providers
                .iter()
                .find(|provider| provider.oruk_service_id == each.provider.oruk_service_id)
            {
                each.provider.id = existing.id.clone();
            }
            document.upsert(each.provider.clone());
            each
        })
        .collect()
}

fn map_service(service: &Value, defaults: &ImportDefaults) -> Result<Imported, String> {
    let text = |field: &str| service.get(field).and_then(Value::as_str).unwrap_or("");
    let oruk_id = text("id");
    if oruk_id.is_empty() {
        return Err("has no id".into());
    }
    let name = text("name").trim();
    if name.is_empty() {
        return Err("has no name".into());
    }
    let mut notes = Vec::new();
    let id = ProviderId::parse(&slug(name)).map_err(|error| error.to_string())?;

    let mut haystack = format!("{name}\n{}", text("description")).to_lowercase();
    for attribute in array(service, "attributes") {
        let term = &attribute["taxonomy_term"];
        for field in ["name", "term", "description"] {
            if let Some(value) = term.get(field).and_then(Value::as_str) {
                haystack.push('\n');
                haystack.push_str(&value.to_lowercase());
            }
        }
    }
    let mut needs: Vec<Need> = Vec::new();
    for (keyword, need) in NEED_KEYWORDS {
        if haystack.contains(keyword) && !needs.contains(need) {
            needs.push(*need);
            notes.push(format!("need {} inferred from {keyword:?}", need.code()));
        }
    }
    if needs.is_empty() {
        needs = vec![Need::Loneliness, Need::SocialIsolation];
        notes.push("no need recognised in the text; set to loneliness and social-isolation".into());
    }
    let kind = match NEED_SERVICE_KEYWORDS
        .iter()
        .find(|keyword| haystack.contains(*keyword))
    {
        Some(keyword) => {
            notes.push(format!("kind need (a service) inferred from {keyword:?}"));
            ProviderKind::Need
        }
        None => {
            notes.push("kind want (an activity): no service keyword found".into());
            ProviderKind::Want
        }
    };

    let ages = AgeRange {
        min: age(service, "minimum_age"),
        max: age(service, "maximum_age"),
    };

    let mut areas = Areas::default();
    for location in array(service, "service_at_locations") {
        for address in array(&location["location"], "addresses")
            .into_iter()
            .chain(array(&location["location"], "physical_addresses"))
        {
            let Some(postal_code) = address.get("postal_code").and_then(Value::as_str) else {
                continue;
            };
            match Postcode::parse(postal_code) {
                Ok(postcode) => push_unique(
                    &mut areas.postcode_districts,
                    postcode.district().to_owned(),
                ),
                Err(_) => notes.push(format!(
                    "location postcode {postal_code:?} is not a UK postcode; not used as an area"
                )),
            }
        }
    }
    for area in array(service, "service_areas") {
        let described = ["service_area", "name"]
            .iter()
            .filter_map(|field| area.get(*field).and_then(Value::as_str))
            .next()
            .unwrap_or("");
        let mut matched = false;
        for token in described.split(|c: char| !c.is_ascii_alphanumeric()) {
            if is_gss_code(token) {
                notes.push(format!(
                    "service area names {token}; add it to places to use it"
                ));
                matched = true;
            } else if token.len() >= 2
                && token
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
            {
                if let Some(district) = normalise_area_postcode(token) {
                    push_unique(&mut areas.postcode_districts, district);
                    matched = true;
                }
            }
        }
        if !matched && !described.is_empty() {
            notes.push(format!(
                "service area {:?} is free text linkwork cannot match to postcodes",
                truncate(described, 80)
            ));
        }
    }
    for area in &defaults.areas {
        match normalise_area_postcode(area) {
            Some(district) => push_unique(&mut areas.postcode_districts, district),
            None => push_unique(&mut areas.local_authorities, area.clone()),
        }
    }
    if areas == Areas::default() {
        notes.push("no area: the provider will be offered nobody until areas are set".into());
    }

    let mut languages: Vec<String> = Vec::new();
    for language in array(service, "languages") {
        let code = language
            .get("code")
            .and_then(Value::as_str)
            .map(super::primary_language)
            .or_else(|| {
                language
                    .get("name")
                    .and_then(Value::as_str)
                    .filter(|name| name.eq_ignore_ascii_case("english"))
                    .map(|_| "en".to_owned())
            });
        if let Some(code) = code {
            push_unique(&mut languages, code);
        }
    }
    if languages.is_empty() {
        languages.push("en".into());
        notes.push("no language code given; English assumed".into());
    }

    let active = match text("status") {
        "" | "active" => true,
        other => {
            notes.push(format!("status {other:?}: imported as inactive"));
            false
        }
    };
    notes.push(format!(
        "capacity {} and {} working days to accept are defaults; ORUK does not say",
        defaults.capacity, defaults.accept_within_working_days
    ));

    Ok(Imported {
        provider: Provider {
            id,
            name: name.to_owned(),
            kind,
            areas,
            ages,
            needs,
            languages,
            accepts_self_referrals: defaults.accepts_self_referrals,
            capacity: defaults.capacity,
            accept_within_working_days: defaults.accept_within_working_days,
            active,
            oruk_service_id: Some(oruk_id.to_owned()),
        },
        notes,
    })
}

fn array<'a>(value: &'a Value, field: &str) -> Vec<&'a Value> {
    value
        .get(field)
        .and_then(Value::as_array)
        .map(|items| items.iter().collect())
        .unwrap_or_default()
}

fn age(service: &Value, field: &str) -> Option<u32> {
    service
        .get(field)
        .and_then(Value::as_u64)
        .and_then(|age| u32::try_from(age).ok())
}

fn push_unique(values: &mut Vec<String>, value: String) {
    if !values.contains(&value) {
        values.push(value);
    }
}

/// ONS GSS codes: a letter and eight digits (`E08000032`).
fn is_gss_code(token: &str) -> bool {
    token.len() == 9
        && token.as_bytes()[0].is_ascii_uppercase()
        && token[1..].bytes().all(|b| b.is_ascii_digit())
}

/// A directory id from a name: `Community Counselling` → `community-counselling`.
fn slug(name: &str) -> String {
    let mut slug = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.is_empty() && !slug.ends_with('-') {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    slug.chars().take(64).collect::<String>()
}

fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        format!("{}...", text.chars().take(max).collect::<String>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service_full() -> Value {
        linkwork_testkit::conformance("oruk/service_full.json")
    }

    #[test]
    fn the_conformance_record_imports_with_its_gaps_reported() {
        let defaults = ImportDefaults {
            areas: vec!["LW1".into()],
            ..ImportDefaults::default()
        };
        let imported = import(&service_full(), &defaults).unwrap();
        assert_eq!(imported.len(), 1);
        let Imported { provider, notes } = &imported[0];
        assert_eq!(provider.id.as_str(), "community-counselling");
        assert_eq!(provider.name, "Community Counselling");
        assert_eq!(
            provider.oruk_service_id.as_deref(),
            Some("ac148810-d857-441c-9679-408f346de14b")
        );
        assert_eq!(provider.kind, ProviderKind::Need);
        assert!(provider.needs.contains(&Need::LowMoodAnxiety));
        assert_eq!(
            provider.ages,
            AgeRange {
                min: Some(12),
                max: Some(100)
            }
        );
        assert!(provider.active);
        assert_eq!(provider.areas.postcode_districts, ["LW1"]);
        assert_eq!(provider.languages, ["en"]);
        let notes = notes.join("\n");
        assert!(
            notes.contains("\"ABC 1234\" is not a UK postcode"),
            "{notes}"
        );
        assert!(notes.contains("free text linkwork cannot match"), "{notes}");
        assert!(
            notes.contains("need low-mood-anxiety inferred from \"anxiety\""),
            "{notes}"
        );
        // The result is a provider a directory accepts.
        let document = DirectoryDocument {
            bank_holidays: vec![],
            places: Default::default(),
            providers: vec![provider.clone()],
        };
        document.validate().unwrap();
    }

    #[test]
    fn reimporting_keeps_the_directory_id_and_replaces_the_entry() {
        let mut document = DirectoryDocument {
            bank_holidays: vec![],
            places: Default::default(),
            providers: vec![],
        };
        let first = import(&service_full(), &ImportDefaults::default()).unwrap();
        merge(&mut document, first);
        document.providers[0].id = ProviderId::parse("counselling-renamed").unwrap();
        let again = import(
            &service_full(),
            &ImportDefaults {
                capacity: 7,
                ..ImportDefaults::default()
            },
        )
        .unwrap();
        merge(&mut document, again);
        assert_eq!(document.providers.len(), 1);
        assert_eq!(document.providers[0].id.as_str(), "counselling-renamed");
        assert_eq!(document.providers[0].capacity, 7);
    }

    #[test]
    fn pages_arrays_and_wrong_shapes() {
        let page = serde_json::json!({ "content": [service_full(), service_full()] });
        assert_eq!(import(&page, &ImportDefaults::default()).unwrap().len(), 2);
        assert!(matches!(
            import(&serde_json::json!("text"), &ImportDefaults::default()),
            Err(ImportError::NotOruk(_))
        ));
        let nameless = serde_json::json!([{ "id": "x" }]);
        assert_eq!(
            import(&nameless, &ImportDefaults::default()).unwrap_err(),
            ImportError::Service {
                index: 0,
                reason: "has no name".into()
            }
        );
    }

    #[test]
    fn uk_location_postcodes_and_districts_in_service_areas_become_areas() {
        let service = serde_json::json!({
            "id": "s1",
            "name": "Men's Shed",
            "description": "A friendly place for retired men who feel lonely.",
            "service_areas": [{ "service_area": "LW3 and LW4" }],
            "service_at_locations": [{ "location": { "addresses": [{ "postal_code": "lw2 1aa" }] } }],
            "languages": [{ "code": "pa-IN" }, { "name": "English" }]
        });
        let imported = import(&service, &ImportDefaults::default()).unwrap();
        let provider = &imported[0].provider;
        assert_eq!(provider.id.as_str(), "men-s-shed");
        assert_eq!(provider.kind, ProviderKind::Want);
        assert_eq!(provider.areas.postcode_districts, ["LW2", "LW3", "LW4"]);
        assert_eq!(provider.languages, ["pa", "en"]);
        assert!(provider.needs.contains(&Need::Retirement));
        assert!(provider.needs.contains(&Need::Loneliness));
    }
}
