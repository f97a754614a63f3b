//! The routing decision for a directory of 200 providers: `cargo bench -p linkwork-router`.

use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use linkwork_domain::{Need, Postcode, ProviderId, SourceKind};
use linkwork_router::decision::{decide, Person};
use linkwork_router::directory::{
    AgeRange, Areas, CompiledDirectory, DirectoryDocument, Provider, ProviderKind, StoredDirectory,
};

/// 200 providers over 40 districts, a quarter of them need services, mixed ages and
/// languages, so that a typical person has a handful of eligible candidates.
fn directory() -> CompiledDirectory {
    let providers = (0..200u32)
        .map(|index| Provider {
            id: ProviderId::parse(&format!("provider-{index:03}")).expect("id"),
            name: format!("Provider {index}"),
            kind: if index % 4 == 0 {
                ProviderKind::Need
            } else {
                ProviderKind::Want
            },
            areas: Areas {
                postcode_districts: (0..4)
                    .map(|offset| format!("LW{}", (index + offset * 7) % 40 + 1))
                    .collect(),
                ..Areas::default()
            },
            ages: AgeRange {
                min: (index % 3 == 0).then_some(50),
                max: None,
            },
            needs: vec![
                Need::ALL[index as usize % 10],
                Need::ALL[(index as usize + 3) % 10],
            ],
            languages: if index % 5 == 0 {
                vec!["en".into(), "pa".into()]
            } else {
                vec!["en".into()]
            },
            accepts_self_referrals: index % 2 == 0,
            capacity: 20 + index % 30,
            accept_within_working_days: 5,
            active: true,
            oruk_service_id: None,
        })
        .collect();
    let document = DirectoryDocument {
        bank_holidays: vec![],
        places: Default::default(),
        providers,
    };
    CompiledDirectory::compile(&StoredDirectory {
        version: 1,
        content_hash: document.content_hash(),
        document,
    })
}

fn bench(criterion: &mut Criterion) {
    let directory = directory();
    let loads: HashMap<ProviderId, u32> = directory
        .providers
        .iter()
        .enumerate()
        .map(|(index, provider)| (provider.provider.id.clone(), (index % 17) as u32))
        .collect();
    let postcode = Postcode::parse("LW7 2AB").expect("postcode");
    let needs = [Need::Loneliness, Need::MoneyWorries];
    let person = Person {
        source: SourceKind::Gp,
        needs: &needs,
        age: Some(71),
        postcode: Some(&postcode),
        language: Some("en".into()),
    };
    criterion.bench_function("route one referral, 200 providers", |bencher| {
        bencher.iter(|| {
            decide(
                black_box(&directory),
                black_box(&person),
                &[],
                black_box(&loads),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
