//! Given a directory, a person and caseloads, then the decision and its explanation.

use std::collections::HashMap;

use linkwork_domain::{Need, Postcode, ProviderId, SourceKind};

use super::*;
use crate::directory::{DirectoryDocument, StoredDirectory};

/// Two want activities and a need service, across two districts.
const DIRECTORY: &str = r#"
places:
  E99000001: { postcodes: [LW1, LW2, LW3] }
providers:
  - id: connectors
    name: Connectors
    kind: want
    areas: { postcode_districts: [LW1, "LW2 4"] }
    needs: [loneliness, social-isolation, money-worries]
    capacity: 5
    accept_within_working_days: 5
  - id: later-life
    name: Later Life
    kind: want
    areas: { local_authorities: [E99000001] }
    ages: { min: 65 }
    needs: [loneliness, bereavement]
    languages: [en, pa]
    capacity: 5
    accept_within_working_days: 5
  - id: money-advice
    name: Money Advice
    kind: need
    areas: { local_authorities: [E99000001] }
    ages: { min: 18 }
    needs: [money-worries]
    accepts_self_referrals: true
    capacity: 2
    accept_within_working_days: 3
"#;

fn directory() -> CompiledDirectory {
    directory_from(DIRECTORY)
}

fn directory_from(text: &str) -> CompiledDirectory {
    let document = DirectoryDocument::parse(text).unwrap();
    CompiledDirectory::compile(&StoredDirectory {
        version: 4,
        content_hash: document.content_hash(),
        document,
    })
}

struct Given {
    source: SourceKind,
    needs: Vec<Need>,
    age: Option<u32>,
    postcode: Option<Postcode>,
    language: Option<String>,
}

fn person() -> Given {
    Given {
        source: SourceKind::Gp,
        needs: vec![Need::Loneliness],
        age: Some(70),
        postcode: Some(Postcode::parse("LW1 2AB").unwrap()),
        language: None,
    }
}

impl Given {
    fn decide(&self, tried: &[&str], active: &[(&str, u32)]) -> Decision {
        let person = Person {
            source: self.source,
            needs: &self.needs,
            age: self.age,
            postcode: self.postcode.as_ref(),
            language: self.language.clone(),
        };
        let tried: Vec<ProviderId> = tried
            .iter()
            .map(|id| ProviderId::parse(id).unwrap())
            .collect();
        let active: HashMap<ProviderId, u32> = active
            .iter()
            .map(|(id, count)| (ProviderId::parse(id).unwrap(), *count))
            .collect();
        decide(&directory(), &person, &tried, &active)
    }
}

fn reasons_for<'a>(decision: &'a Decision, provider: &str) -> &'a [String] {
    &decision
        .candidates()
        .iter()
        .find(|candidate| candidate.provider_id.as_str() == provider)
        .unwrap()
        .excluded_because
}

fn eligible(decision: &Decision, provider: &str) -> bool {
    decision
        .candidates()
        .iter()
        .find(|candidate| candidate.provider_id.as_str() == provider)
        .unwrap()
        .eligible
}

fn routed_to(decision: &Decision) -> Option<&str> {
    match decision {
        Decision::Route { provider, .. } => Some(provider.as_str()),
        Decision::Unroutable { .. } => None,
    }
}

#[test]
fn eligibility_table() {
    // (case, how the person differs, provider checked, eligible?, reason fragment)
    type Adjust = fn(&mut Given);
    let cases: Vec<(&str, Adjust, &str, bool, &str)> = vec![
        ("district served directly", |_| {}, "connectors", true, ""),
        (
            "sector served, district not",
            |g| g.postcode = Some(Postcode::parse("LW2 4QQ").unwrap()),
            "connectors",
            true,
            "",
        ),
        (
            "other sector of that district",
            |g| g.postcode = Some(Postcode::parse("LW2 5QQ").unwrap()),
            "connectors",
            false,
            "does not serve the person's postcode district",
        ),
        (
            "district served through a place",
            |g| g.postcode = Some(Postcode::parse("LW3 1AA").unwrap()),
            "later-life",
            true,
            "",
        ),
        (
            "district outside every area",
            |g| g.postcode = Some(Postcode::parse("LW9 1AA").unwrap()),
            "later-life",
            false,
            "does not serve the person's postcode district",
        ),
        (
            "no postcode",
            |g| g.postcode = None,
            "connectors",
            false,
            "no postcode to check the area against",
        ),
        ("old enough", |g| g.age = Some(65), "later-life", true, ""),
        (
            "too young",
            |g| g.age = Some(64),
            "later-life",
            false,
            "serves ages 65 and over; the person is outside it",
        ),
        (
            "age unknown, provider has an age range",
            |g| g.age = None,
            "later-life",
            false,
            "serves ages 65 and over; the referral gives no birth date",
        ),
        (
            "age unknown, provider serves all ages",
            |g| g.age = None,
            "connectors",
            true,
            "",
        ),
        (
            "need handled",
            |g| g.needs = vec![Need::Bereavement],
            "later-life",
            true,
            "",
        ),
        (
            "no need handled",
            |g| g.needs = vec![Need::DigitalExclusion, Need::Caring],
            "later-life",
            false,
            "handles none of the person's needs (digital-exclusion, caring)",
        ),
        (
            "one of several needs handled",
            |g| g.needs = vec![Need::Caring, Need::Loneliness],
            "connectors",
            true,
            "",
        ),
        (
            "language spoken",
            |g| g.language = Some("pa".into()),
            "later-life",
            true,
            "",
        ),
        (
            "language not spoken",
            |g| g.language = Some("pa".into()),
            "connectors",
            false,
            "does not work in the person's language",
        ),
        (
            "English by default",
            |g| g.language = Some("en".into()),
            "connectors",
            true,
            "",
        ),
        (
            "self-referral not taken",
            |g| g.source = SourceKind::SelfReferral,
            "connectors",
            false,
            "does not take self-referrals",
        ),
        (
            "self-referral taken",
            |g| {
                g.source = SourceKind::SelfReferral;
                g.needs = vec![Need::MoneyWorries];
            },
            "money-advice",
            true,
            "",
        ),
        (
            "ASC diversion is not self-referral",
            |g| g.source = SourceKind::Asc,
            "connectors",
            true,
            "",
        ),
    ];
    assert!(cases.len() >= 15);
    for (case, adjust, provider, expect_eligible, fragment) in cases {
        let mut given = person();
        adjust(&mut given);
        let decision = given.decide(&[], &[]);
        assert_eq!(
            eligible(&decision, provider),
            expect_eligible,
            "{case}: eligibility of {provider}; reasons {:?}",
            reasons_for(&decision, provider)
        );
        if !fragment.is_empty() {
            let reasons = reasons_for(&decision, provider).join(" | ");
            assert!(
                reasons.contains(fragment),
                "{case}: {reasons:?} lacks {fragment:?}"
            );
        }
    }
}

#[test]
fn every_failed_rule_is_listed_not_just_the_first() {
    let mut given = person();
    given.age = Some(30);
    given.needs = vec![Need::Caring];
    given.language = Some("ur".into());
    let decision = given.decide(&[], &[]);
    let reasons = reasons_for(&decision, "later-life");
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(routed_to(&decision).is_none());
}

#[test]
fn needs_first_sends_money_worries_to_the_need_service_before_an_activity() {
    let mut given = person();
    given.needs = vec![Need::Loneliness, Need::MoneyWorries];
    given.age = Some(40);
    let decision = given.decide(&[], &[]);
    assert_eq!(routed_to(&decision), Some("money-advice"));
    let Decision::Route { rule, .. } = &decision else {
        unreachable!()
    };
    assert!(rule.starts_with("needs first"), "{rule}");
    // The activity was eligible, and the explanation says why it lost.
    assert!(eligible(&decision, "connectors"));
    assert_eq!(
        reasons_for(&decision, "connectors"),
        ["needs first: a need service for the person's needs had room"]
    );
}

#[test]
fn when_the_need_services_are_full_the_activity_is_next() {
    let mut given = person();
    given.needs = vec![Need::Loneliness, Need::MoneyWorries];
    given.age = Some(40);
    let decision = given.decide(&[], &[("money-advice", 2)]);
    assert_eq!(routed_to(&decision), Some("connectors"));
    assert_eq!(
        reasons_for(&decision, "money-advice"),
        ["at capacity (2 of 2 active)"]
    );
}

#[test]
fn least_loaded_wins_and_ties_go_to_the_first_id() {
    let given = person(); // 70, loneliness, LW1: connectors and later-life are eligible.
    let decision = given.decide(&[], &[("connectors", 3), ("later-life", 1)]);
    assert_eq!(routed_to(&decision), Some("later-life"));
    assert_eq!(
        reasons_for(&decision, "connectors"),
        ["more loaded (3 of 5 active) than later-life (1 of 5)"]
    );
    let tie = given.decide(&[], &[("connectors", 2), ("later-life", 2)]);
    assert_eq!(routed_to(&tie), Some("connectors"));
    assert_eq!(
        reasons_for(&tie, "later-life"),
        ["as loaded (2 of 5) as connectors, which comes first by id"]
    );
    let Decision::Route { rule, .. } = &tie else {
        unreachable!()
    };
    assert_eq!(rule, "eligible; least loaded with room (2 of 5 active)");
}

#[test]
fn a_provider_already_tried_is_excluded() {
    let decision = person().decide(&["connectors"], &[]);
    assert_eq!(routed_to(&decision), Some("later-life"));
    assert_eq!(
        reasons_for(&decision, "connectors"),
        ["has already had this referral"]
    );
}

#[test]
fn nobody_eligible_or_everybody_full_is_unroutable_with_reasons() {
    let mut given = person();
    given.postcode = Some(Postcode::parse("LW9 9ZZ").unwrap());
    let Decision::Unroutable {
        reasons,
        candidates,
    } = given.decide(&[], &[])
    else {
        panic!("expected unroutable")
    };
    assert_eq!(candidates.len(), 3);
    assert!(candidates.iter().all(|candidate| !candidate.eligible));
    assert!(
        reasons[0].starts_with("no provider is eligible: 3 in directory v4-"),
        "{reasons:?}"
    );

    let Decision::Unroutable { reasons, .. } =
        person().decide(&[], &[("connectors", 5), ("later-life", 9)])
    else {
        panic!("expected unroutable")
    };
    assert_eq!(
        reasons,
        ["every eligible provider is at capacity: connectors (5 of 5), later-life (9 of 5)"]
    );
}

#[test]
fn the_explanation_covers_every_provider_of_the_directory_in_id_order() {
    let decision = person().decide(&[], &[]);
    let ids: Vec<&str> = decision
        .candidates()
        .iter()
        .map(|candidate| candidate.provider_id.as_str())
        .collect();
    assert_eq!(ids, ["connectors", "later-life", "money-advice"]);
    // The chosen one has no reason against it; every other one has at least one.
    let chosen = routed_to(&decision).unwrap();
    for candidate in decision.candidates() {
        assert_eq!(
            candidate.excluded_because.is_empty(),
            candidate.provider_id.as_str() == chosen,
            "{candidate:?}"
        );
    }
}

#[test]
fn inactive_providers_are_passed_over() {
    let text = DIRECTORY.replace(
        "    capacity: 5\n    accept_within_working_days: 5\n  - id: later-life",
        "    capacity: 5\n    active: false\n    accept_within_working_days: 5\n  - id: later-life",
    );
    let document = DirectoryDocument::parse(&text).unwrap();
    let compiled = CompiledDirectory::compile(&StoredDirectory {
        version: 1,
        content_hash: document.content_hash(),
        document,
    });
    let given = person();
    let decision = decide(
        &compiled,
        &Person {
            source: given.source,
            needs: &given.needs,
            age: given.age,
            postcode: given.postcode.as_ref(),
            language: None,
        },
        &[],
        &HashMap::new(),
    );
    assert_eq!(routed_to(&decision), Some("later-life"));
    assert_eq!(
        reasons_for(&decision, "connectors"),
        ["not taking referrals (inactive in the directory)"]
    );
}

#[test]
fn ages_are_whole_years_on_the_day() {
    let born = NaiveDate::from_ymd_opt(1956, 11, 23).unwrap();
    assert_eq!(
        age_on(born, NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()),
        Some(69)
    );
    assert_eq!(
        age_on(born, NaiveDate::from_ymd_opt(2026, 11, 23).unwrap()),
        Some(70)
    );
    assert_eq!(
        age_on(born, NaiveDate::from_ymd_opt(1950, 1, 1).unwrap()),
        None
    );
}

#[test]
fn the_same_inputs_always_give_the_same_decision() {
    let given = person();
    let first = given.decide(&[], &[("connectors", 1)]);
    for _ in 0..10 {
        assert_eq!(given.decide(&[], &[("connectors", 1)]), first);
    }
    let _ = directory_from(DIRECTORY);
}
