//! A referral's whole life as logged events, for benchmarks and tests that need many:
//! received, routed to `connectors`, accepted, a baseline loneliness score, completed.

use chrono::{DateTime, Duration, Utc};
use linkwork_domain::event::{
    OutcomeRecorded, ProviderStatusChange, ReferralReceived, ReferralRouted,
};
use linkwork_domain::{OutcomeMeasure, ProviderId, ReferralEvent, Timepoint};
use uuid::Uuid;

/// The provider every life goes to.
pub const PROVIDER: &str = "connectors";

/// `received`, then four more events a minute apart from `received.occurred_at`.
pub fn life(received: ReferralReceived) -> Vec<ReferralEvent> {
    let at: DateTime<Utc> = received.occurred_at;
    let id = received.referral_id;
    let provider = ProviderId::parse(PROVIDER).expect("a valid provider id");
    let change = |minutes: i64| ProviderStatusChange {
        referral_id: id,
        provider_id: provider.clone(),
        reason: None,
        occurred_at: at + Duration::minutes(minutes),
    };
    vec![
        ReferralEvent::Received(Box::new(received)),
        ReferralEvent::Routed(ReferralRouted {
            referral_id: id,
            provider_id: provider.clone(),
            attempt: 1,
            directory_version: "v1-synthetic".into(),
            rule: "needs first".into(),
            candidates: Vec::new(),
            accept_by: at + Duration::days(2),
            occurred_at: at + Duration::minutes(1),
        }),
        ReferralEvent::Accepted(change(2)),
        ReferralEvent::OutcomeRecorded(OutcomeRecorded {
            referral_id: id,
            provider_id: provider.clone(),
            observation_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, id.to_string().as_bytes()),
            timepoint: Timepoint::Baseline,
            measure: OutcomeMeasure::Ucla3 { score: 7 },
            effective_at: at + Duration::minutes(3),
            occurred_at: at + Duration::minutes(3),
        }),
        ReferralEvent::Completed(change(4)),
    ]
}
