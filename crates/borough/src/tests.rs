use super::*;
use chrono::Duration;
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
    let read = linkwork_fhir::message::read(&message).unwrap_or_else(|issues| panic!("{issues:?}"));
    assert_eq!(read.reason, linkwork_fhir::message::MessageReason::New);
    let batch: Vec<&Referral> = town
        .referrals
        .iter()
        .filter(|r| r.channel == Channel::Batch)
        .take(5)
        .collect();
    let bundle = town.batch_bundle(&batch, base);
    let read = linkwork_fhir::batch::read(&bundle).unwrap_or_else(|issues| panic!("{issues:?}"));
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
        let resolver = linkwork_fhir::Resolver::new().with_contained(&resource, "ServiceRequest");
        linkwork_fhir::parse::typed::<linkwork_fhir::fhir_model::r4b::resources::ServiceRequest>(
            &resource,
            "ServiceRequest",
        )
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
