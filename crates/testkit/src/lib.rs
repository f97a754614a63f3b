//! Test support: where the conformance corpus is, synthetic referrals, a broker of a
//! test's own ([`broker`]) and async topic reads ([`topic`]).
//!
//! All people here are invented; NHS numbers come from the 999 range, which the NHS
//! never issues, and pass the Modulus 11 check.

pub mod broker;
pub mod life;
pub mod process;
pub mod topic;

use std::path::PathBuf;

use serde_json::{json, Value};

/// The conformance corpus the repository keeps (`tests/conformance/`, with a README
/// naming each file's source and licence), so a fresh clone tests alone. Set
/// `LINKWORK_CONFORMANCE_DIR` to use another copy.
pub fn conformance_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("LINKWORK_CONFORMANCE_DIR") {
        return PathBuf::from(dir);
    }
    workspace_root().join("tests/conformance")
}

/// The checkout the tests run from. Read at run time from `CARGO_MANIFEST_DIR`, which
/// cargo and nextest set for every test binary, and not baked in with `env!`: one target
/// directory serves several checkouts (CI keeps it warm outside the clone), and a crate
/// that is not rebuilt would otherwise keep pointing at the checkout that built it.
pub fn workspace_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|dir| dir.join("Cargo.lock").is_file())
        .map(PathBuf::from)
        .unwrap_or(start)
}

/// A file of the corpus, parsed.
pub fn conformance(relative: &str) -> Value {
    let path = conformance_dir().join(relative);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// Every file of a corpus folder: (file name, raw bytes).
pub fn conformance_files(folder: &str) -> Vec<(String, Vec<u8>)> {
    let dir = conformance_dir().join(folder);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .map(|entry| {
            let path = entry.expect("directory entry").path();
            let name = path
                .file_name()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default();
            let bytes =
                std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
            (name, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Valid synthetic NHS numbers (999 range, Modulus 11).
pub const NHS_NUMBERS: [&str; 6] = [
    "9990000018",
    "9990000026",
    "9990000034",
    "9990000042",
    "9990000050",
    "9990000069",
];

/// A valid GP referral for social isolation: the person is an invented Patient,
/// contained, with a synthetic NHS number. `reference` is the GP's own identifier.
pub fn gp_referral(reference: &str) -> Value {
    json!({
        "resourceType": "ServiceRequest",
        "identifier": [{"system": "https://gp.example/referrals", "value": reference}],
        "contained": [{
            "resourceType": "Patient",
            "id": "patient",
            "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS_NUMBERS[0]}],
            "name": [{"family": "Brightwater", "given": ["Ada"]}],
            "birthDate": "1941-05-06",
            "address": [{"line": ["1 Invented Row"], "city": "Townley", "postalCode": "LS1 4AP"}]
        }],
        "status": "active",
        "intent": "order",
        "priority": "routine",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "871731000000106",
                             "display": "Referral to social prescribing service"}]},
        "reasonCode": [{"coding": [{"system": "http://snomed.info/sct", "code": "422650009", "display": "Social isolation"}]}],
        "subject": {"reference": "#patient"},
        "authoredOn": "2026-03-01T10:00:00Z",
        "requester": {"display": "Dr Example, Townley Surgery"}
    })
}

/// A BaRS `servicerequest-request` message carrying a referral like [`gp_referral`],
/// with the Patient as a separate entry referenced by `urn:uuid:`. `reason` is `new`
/// or `update`; `status` is the ServiceRequest's (`active`, `revoked`, ...).
pub fn bars_message(reference: &str, reason: &str, status: &str) -> Value {
    let mut request = gp_referral(reference);
    let patient = request["contained"][0].clone();
    if let Some(fields) = request.as_object_mut() {
        fields.remove("contained");
        fields.insert(
            "subject".into(),
            json!({"reference": "urn:uuid:9e5c6d43-0d6c-4bf5-9d0a-7c1a3a1f0a01"}),
        );
        fields.insert("intent".into(), json!("plan"));
        fields.insert("status".into(), json!(status));
    }
    json!({
        "resourceType": "Bundle",
        "id": "6f0f8a41-3b3e-4d1e-8f77-2b7f7b2c1a10",
        "meta": {"lastUpdated": "2026-03-01T10:00:00+00:00",
                 "profile": ["https://fhir.nhs.uk/StructureDefinition/BARSBundleMessage"]},
        "type": "message",
        "timestamp": "2026-03-01T10:00:00+00:00",
        "entry": [
            {"fullUrl": "urn:uuid:0c1f4f1e-5b2a-4b1c-9d55-3c9b8e0a7d01", "resource": {
                "resourceType": "MessageHeader",
                "eventCoding": {"system": "https://fhir.nhs.uk/CodeSystem/message-events-bars", "code": "servicerequest-request"},
                "destination": [{"endpoint": "https://linkwork.example/fhir/Id/service|router"}],
                "source": {"name": "Townley Surgery", "endpoint": "https://gp.example/bars"},
                "reason": {"coding": [{"system": "https://fhir.nhs.uk/CodeSystem/message-reason-bars", "code": reason}]},
                "focus": [{"reference": "urn:uuid:4b2d7e6a-1f3c-4e5d-8a9b-0c1d2e3f4a5b"}]
            }},
            {"fullUrl": "urn:uuid:4b2d7e6a-1f3c-4e5d-8a9b-0c1d2e3f4a5b", "resource": request},
            {"fullUrl": "urn:uuid:9e5c6d43-0d6c-4bf5-9d0a-7c1a3a1f0a01", "resource": patient}
        ]
    })
}
