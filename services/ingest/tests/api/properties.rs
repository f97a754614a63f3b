//! Whatever arrives, ingest answers without panicking and without a 5xx: arbitrary JSON,
//! and arbitrary mutations of a valid referral, on every endpoint.

use std::sync::OnceLock;

use base64::Engine;
use linkwork_testkit::{bars_message, gp_referral};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use crate::helpers::{gp_token, spawn_app, TestApp};

/// One running ingest for all cases, on its own runtime.
fn app() -> &'static (tokio::runtime::Runtime, TestApp) {
    static APP: OnceLock<(tokio::runtime::Runtime, TestApp)> = OnceLock::new();
    APP.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let app = runtime.block_on(spawn_app());
        (runtime, app)
    })
}

fn post(path: &str, body: String) -> (u16, Value) {
    let (runtime, app) = app();
    runtime.block_on(async {
        let target = base64::engine::general_purpose::STANDARD.encode(
            json!({"system": "https://linkwork.example/fhir/Id/service", "value": "router"})
                .to_string(),
        );
        let response = app
            .client
            .post(format!("{}{path}", app.address))
            .header("content-type", "application/fhir+json")
            .header("x-request-id", uuid::Uuid::new_v4().to_string())
            .header("x-correlation-id", uuid::Uuid::new_v4().to_string())
            .header("nhsd-target-identifier", target)
            .header("nhsd-end-user-organisation-ods", "A81001")
            .bearer_auth(gp_token())
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    })
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,24}".prop_map(Value::String),
        prop_oneof![
            Just("ServiceRequest"),
            Just("Bundle"),
            Just("active"),
            Just("order"),
            Just("#patient"),
            Just("urn:uuid:4b2d7e6a-1f3c-4e5d-8a9b-0c1d2e3f4a5b"),
            Just("9990000018"),
            Just("2026-03-01")
        ]
        .prop_map(|text| Value::String(text.to_owned())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec(
                (
                    prop_oneof![
                        ".{0,12}",
                        Just("resourceType".to_owned()),
                        Just("status".to_owned()),
                        Just("subject".to_owned()),
                        Just("entry".to_owned())
                    ],
                    inner
                ),
                0..6
            )
            .prop_map(|pairs| Value::Object(pairs.into_iter().collect::<Map<String, Value>>())),
        ]
    })
}

/// Every path in a JSON value (object keys and array indexes).
fn paths(value: &Value, prefix: Vec<PathStep>, out: &mut Vec<Vec<PathStep>>) {
    match value {
        Value::Object(fields) => {
            for (key, child) in fields {
                let mut path = prefix.clone();
                path.push(PathStep::Key(key.clone()));
                out.push(path.clone());
                paths(child, path, out);
            }
        }
        Value::Array(items) => {
            for (index, child) in items.iter().enumerate() {
                let mut path = prefix.clone();
                path.push(PathStep::Index(index));
                out.push(path.clone());
                paths(child, path, out);
            }
        }
        _ => {}
    }
}

#[derive(Debug, Clone)]
enum PathStep {
    Key(String),
    Index(usize),
}

fn at<'a>(value: &'a mut Value, path: &[PathStep]) -> Option<&'a mut Value> {
    path.iter().try_fold(value, |current, step| match step {
        PathStep::Key(key) => current.get_mut(key.as_str()),
        PathStep::Index(index) => current.get_mut(*index),
    })
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(Value),
    Remove,
    AddSibling(String, Value),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        arbitrary_json().prop_map(Mutation::Replace),
        Just(Mutation::Remove),
        (".{1,12}", arbitrary_json()).prop_map(|(key, value)| Mutation::AddSibling(key, value)),
    ]
}

/// Applies `mutations` (each with a position, taken modulo the paths that exist).
fn mutate(mut value: Value, mutations: &[(usize, Mutation)]) -> Value {
    for (position, mutation) in mutations {
        let mut all = Vec::new();
        paths(&value, Vec::new(), &mut all);
        if all.is_empty() {
            break;
        }
        let path = &all[position % all.len()];
        let (parent_path, last) = path.split_at(path.len() - 1);
        match mutation {
            Mutation::Replace(replacement) => {
                if let Some(target) = at(&mut value, path) {
                    *target = replacement.clone();
                }
            }
            Mutation::Remove => match (at(&mut value, parent_path), &last[0]) {
                (Some(Value::Object(fields)), PathStep::Key(key)) => {
                    fields.remove(key);
                }
                (Some(Value::Array(items)), PathStep::Index(index)) if *index < items.len() => {
                    items.remove(*index);
                }
                _ => {}
            },
            Mutation::AddSibling(key, added) => {
                if let Some(Value::Object(fields)) = at(&mut value, parent_path) {
                    fields.insert(key.clone(), added.clone());
                }
            }
        }
    }
    value
}

fn assert_answered(path: &str, status: u16, body: &Value) {
    assert!(status < 500, "{path} answered {status}: {body}");
    assert!(
        body.get("resourceType").is_some(),
        "{path} answered {status} without a FHIR body: {body}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_json_never_panics_or_fails_inside(body in arbitrary_json()) {
        for path in ["/fhir/ServiceRequest", "/fhir", "/fhir/$process-message"] {
            let (status, answer) = post(path, body.to_string());
            assert_answered(path, status, &answer);
        }
    }

    #[test]
    fn mutated_referrals_never_panic_or_fail_inside(
        mutations in prop::collection::vec((any::<usize>(), mutation()), 1..4),
        reference in "[A-Z0-9]{6}",
    ) {
        let referral = mutate(gp_referral(&format!("prop-{reference}")), &mutations);
        let (status, answer) = post("/fhir/ServiceRequest", referral.to_string());
        assert_answered("/fhir/ServiceRequest", status, &answer);
        let message = mutate(bars_message(&format!("prop-{reference}"), "new", "active"), &mutations);
        let (status, answer) = post("/fhir/$process-message", message.to_string());
        assert_answered("/fhir/$process-message", status, &answer);
    }

    #[test]
    fn arbitrary_bytes_never_panic_or_fail_inside(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let body = String::from_utf8_lossy(&bytes).into_owned();
        let (status, answer) = post("/fhir/ServiceRequest", body);
        assert_answered("/fhir/ServiceRequest", status, &answer);
    }
}
