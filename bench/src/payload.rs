//! Synthetic payloads: GP referrals as a sender posts them, and the events ingest makes
//! of them, generated in chunks so a million events never sit in memory at once.

use chrono::{DateTime, Utc};
use linkwork_domain::event::ReferralReceived;
use linkwork_domain::{EventId, ReferralEvent, Source};
use linkwork_fhir::{referral, IntakeRules};

/// How many events to generate and produce at a time.
pub const CHUNK: usize = 5_000;

/// The referral `number` of run `run` as a GP's system posts it: a ServiceRequest with
/// its Patient contained (synthetic NHS number, invented person).
pub fn service_request(run: &str, number: usize) -> String {
    linkwork_testkit::gp_referral(&format!("BENCH-{run}-{number:08}")).to_string()
}

/// The `ReferralReceived` ingest logs for referral `number` of `run`.
pub fn received(run: &str, number: usize, at: DateTime<Utc>) -> anyhow::Result<ReferralReceived> {
    let source = Source::parse("gp:A81001")?;
    let body = linkwork_testkit::gp_referral(&format!("BENCH-{run}-{number:08}"));
    let validated = referral::read_service_request(&source, &body, &IntakeRules::default(), at)
        .map_err(|issues| anyhow::anyhow!("the synthetic referral is refused: {issues:?}"))?;
    Ok(validated.into_event(at))
}

/// Receipts of referrals `numbers`, with their event ids as ingest derives them.
pub fn receipts(
    run: &str,
    numbers: std::ops::Range<usize>,
    at: DateTime<Utc>,
) -> anyhow::Result<Vec<(EventId, ReferralEvent)>> {
    numbers
        .map(|number| {
            let received = received(run, number, at)?;
            let id = EventId::derive(&["received", &received.referral_id.to_string()]);
            Ok((id, ReferralEvent::Received(Box::new(received))))
        })
        .collect()
}

/// Whole lives (five events each) of referrals `numbers`.
pub fn lives(
    run: &str,
    numbers: std::ops::Range<usize>,
    at: DateTime<Utc>,
) -> anyhow::Result<Vec<(EventId, ReferralEvent)>> {
    let mut events = Vec::with_capacity(numbers.len() * 5);
    for number in numbers {
        let received = received(run, number, at)?;
        let referral = received.referral_id.to_string();
        for (step, event) in linkwork_testkit::life::life(received)
            .into_iter()
            .enumerate()
        {
            let id = EventId::derive(&["life", &referral, &step.to_string()]);
            events.push((id, event));
        }
    }
    Ok(events)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_referral_is_its_own_and_valid() {
        let at = Utc::now();
        let events = receipts("t", 0..3, at).unwrap();
        let mut ids: Vec<String> = events
            .iter()
            .map(|(_, event)| event.referral_id().to_string())
            .collect();
        ids.dedup();
        assert_eq!(ids.len(), 3);
        assert_eq!(lives("t", 0..2, at).unwrap().len(), 10);
        let body: serde_json::Value = serde_json::from_str(&service_request("t", 1)).unwrap();
        assert_eq!(body["resourceType"], "ServiceRequest");
    }
}
