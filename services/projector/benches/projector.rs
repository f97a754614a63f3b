//! The projector's own work, without the broker or Postgres: folding one batch of
//! logged events onto the referrals it touches (`project::fold_batch`, what every
//! consumed batch costs before its writes), and the pseudonym of a person.
//! `cargo bench -p linkwork-projector`.

use std::collections::HashMap;
use std::hint::black_box;

use chrono::{DateTime, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use linkwork_domain::{ReferralEvent, Source};
use linkwork_fhir::{referral, IntakeRules};
use linkwork_projector::project::{fold_batch, LoggedEvent};
use linkwork_projector::PseudonymKey;
use uuid::Uuid;

/// A referral's life to its end (`linkwork_testkit::life`).
fn life(number: u32, at: DateTime<Utc>) -> Vec<ReferralEvent> {
    let source = Source::parse("gp:A81001").expect("a source");
    let body = linkwork_testkit::gp_referral(&format!("BENCH-{number:06}"));
    let received = referral::read_service_request(&source, &body, &IntakeRules::default(), at)
        .expect("a valid referral")
        .into_event(at);
    linkwork_testkit::life::life(received)
}

fn fold(criterion: &mut Criterion) {
    use linkwork_domain::DomainEvent;
    let at = Utc::now();
    // 100 referrals' whole lives: a batch of 500 events, as the consumer reads them.
    let events: Vec<(Uuid, String, ReferralEvent)> = (0..100)
        .flat_map(|number| life(number, at))
        .enumerate()
        .map(|(index, event)| {
            let id = Uuid::new_v5(&Uuid::NAMESPACE_OID, &index.to_le_bytes());
            (id, event.event_type().to_owned(), event)
        })
        .collect();
    let logged: Vec<LoggedEvent<'_>> = events
        .iter()
        .map(|(event_id, event_type, event)| LoggedEvent {
            event_id: *event_id,
            event_type,
            event,
        })
        .collect();
    let mut group = criterion.benchmark_group("projector");
    group.throughput(Throughput::Elements(logged.len() as u64));
    group.bench_function("fold one batch of 500 events", |bencher| {
        bencher.iter_batched(
            HashMap::new,
            |mut referrals| {
                let folded = fold_batch(&mut referrals, black_box(&logged));
                assert_eq!(folded.changed.len(), 100);
                folded
            },
            BatchSize::SmallInput,
        );
    });
    group.finish();
}

fn pseudonym(criterion: &mut Criterion) {
    let key = PseudonymKey::new(&[7u8; 32]).expect("a strong key");
    let referral = Uuid::new_v5(&Uuid::NAMESPACE_OID, b"bench");
    criterion.bench_function("pseudonym of a person (HMAC-SHA-256)", |bencher| {
        bencher.iter(|| key.person(black_box(Some("9990000018")), black_box(&referral)))
    });
}

criterion_group!(benches, fold, pseudonym);
criterion_main!(benches);
