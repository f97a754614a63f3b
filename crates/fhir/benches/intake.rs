//! Parse + validate, from the bytes a sender posts to a referral ready for the log:
//! one ServiceRequest (`POST /fhir/ServiceRequest`) and one BaRS message Bundle
//! (`POST /fhir/$process-message`). `cargo bench -p linkwork-fhir`.

use std::hint::black_box;

use chrono::Utc;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use linkwork_domain::Source;
use linkwork_fhir::{referral, IntakeRules};
use serde_json::Value;

/// What both benchmarks read with: a GP as the source, the default rules, now.
fn context() -> (Source, IntakeRules, chrono::DateTime<Utc>) {
    (
        Source::parse("gp:A81001").expect("a source"),
        IntakeRules::default(),
        Utc::now(),
    )
}

fn service_request(criterion: &mut Criterion) {
    let bytes = linkwork_testkit::gp_referral("BENCH-000001")
        .to_string()
        .into_bytes();
    let (source, rules, now) = context();
    let mut group = criterion.benchmark_group("intake");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("parse + validate one ServiceRequest", |bencher| {
        bencher.iter(|| {
            let body: Value = serde_json::from_slice(black_box(&bytes)).expect("JSON");
            referral::read_service_request(&source, &body, &rules, now).expect("valid")
        });
    });
    group.finish();
}

fn bars_bundle(criterion: &mut Criterion) {
    let bytes = linkwork_testkit::bars_message("BENCH-000002", "new", "active")
        .to_string()
        .into_bytes();
    let (source, rules, now) = context();
    let mut group = criterion.benchmark_group("intake");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("parse + validate one BaRS message Bundle", |bencher| {
        bencher.iter(|| {
            let bundle: Value = serde_json::from_slice(black_box(&bytes)).expect("JSON");
            referral::read_message(&source, &bundle, &rules, now).expect("valid")
        });
    });
    group.finish();
}

criterion_group!(benches, service_request, bars_bundle);
criterion_main!(benches);
