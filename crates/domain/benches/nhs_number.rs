//! The NHS number check (ten digits, Modulus 11): `cargo bench -p linkwork-domain`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use linkwork_domain::NhsNumber;

fn nhs_number(criterion: &mut Criterion) {
    // Synthetic, from the never-issued 999 range; spaced as people write them.
    let valid = "999 000 0018";
    let invalid = "999 000 0019";
    assert!(NhsNumber::parse(valid).is_ok(), "{valid} passes Modulus 11");
    assert!(NhsNumber::parse(invalid).is_err());
    criterion.bench_function("NHS number: a valid one", |bencher| {
        bencher.iter(|| NhsNumber::parse(black_box(valid)))
    });
    criterion.bench_function("NHS number: a wrong check digit", |bencher| {
        bencher.iter(|| NhsNumber::parse(black_box(invalid)))
    });
}

criterion_group!(benches, nhs_number);
criterion_main!(benches);
