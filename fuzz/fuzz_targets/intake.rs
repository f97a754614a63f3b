//! Fuzzes ingest's reading of what senders post: JSON, FHIR structure, BaRS messages,
//! batch Bundles and the referral rules. Nothing may panic, whatever the bytes.
//! Seeded from the shared conformance corpus (`make fuzz`).

#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use linkwork_domain::Source;
use linkwork_fhir::fhir_model::r4b::resources::ServiceRequest;
use linkwork_fhir::{batch, message, parse, referral, IntakeRules, Located, Resolver};

fuzz_target!(|bytes: &[u8]| {
    let Ok(body) = parse::json(bytes) else { return };
    let source = Source::parse("gp:A81001").expect("a valid source");
    let rules = IntakeRules::default();
    let now = Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).single().expect("a valid time");
    match parse::resource_type(&body) {
        Some("ServiceRequest") => {
            if parse::typed::<ServiceRequest>(&body, "ServiceRequest").is_ok() {
                let located = Located { resource: &body, path: "ServiceRequest".into(), fallback_identifier: None };
                let resolver = Resolver::new().with_contained(&body, "ServiceRequest");
                let _ = referral::validate(&source, &located, &resolver, &rules, now);
            }
        }
        Some("Bundle") => {
            if let Ok(message) = message::read(&body) {
                let _ = referral::validate(&source, &message.service_request, &message.resolver, &rules, now);
                let _ = referral::identity(&source, &message.service_request);
            }
            if let Ok(request) = batch::read(&body) {
                for entry in &request.entries {
                    if let batch::Entry::Referral { request, resolver, .. } = entry {
                        let _ = referral::validate(&source, request, resolver, &rules, now);
                    }
                }
            }
        }
        _ => {}
    }
});
