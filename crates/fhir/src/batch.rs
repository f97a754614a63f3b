//! Batch and transaction Bundles of referrals (hospital and contact-centre uploads).
//!
//! Each entry must be a `POST ServiceRequest`. In a transaction, entries may also carry
//! the Patients and Practitioners the referrals point at (by `urn:uuid:`); they travel
//! inside the referral rather than being stored on their own. In a batch, as FHIR
//! says, entries do not depend on each other: a referral identifies its person by
//! NHS number or a contained Patient.

use serde_json::Value;

use crate::outcome::{Issue, IssueCode};
use crate::referral::{text, Located};
use crate::resolve::Resolver;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BundleKind {
    Batch,
    Transaction,
}

impl BundleKind {
    pub fn response_type(self) -> &'static str {
        match self {
            BundleKind::Batch => "batch-response",
            BundleKind::Transaction => "transaction-response",
        }
    }
}

/// Resources a transaction may carry for its referrals to point at.
const CONTEXT_TYPES: [&str; 4] = [
    "Patient",
    "Practitioner",
    "PractitionerRole",
    "Organization",
];

/// One entry of the Bundle, read.
#[derive(Debug, Clone)]
pub enum Entry<'a> {
    Referral {
        index: usize,
        request: Located<'a>,
        resolver: Resolver<'a>,
    },
    /// A Patient or Practitioner that referrals in the transaction point at.
    Context { index: usize, resource_type: String },
    /// An entry refused on its own; in a batch the others still go ahead.
    Refused { index: usize, issues: Vec<Issue> },
}

#[derive(Debug, Clone)]
pub struct BatchRequest<'a> {
    pub kind: BundleKind,
    pub entries: Vec<Entry<'a>>,
}

/// Reads a batch or transaction Bundle. Problems with the Bundle itself are returned
/// as `Err`; problems with single entries are `Entry::Refused`.
pub fn read(bundle: &Value) -> Result<BatchRequest<'_>, Vec<Issue>> {
    crate::parse::expect_resource_type(bundle, "Bundle", "Bundle").map_err(|issue| vec![issue])?;
    crate::parse::typed::<fhir_model::r4b::resources::Bundle>(bundle, "Bundle")?;
    let kind = match text(bundle, "type") {
        Some("batch") => BundleKind::Batch,
        Some("transaction") => BundleKind::Transaction,
        other => {
            return Err(vec![Issue::error(
                IssueCode::Invalid,
                format!(
                    "POST /fhir takes a batch or transaction Bundle, not {}; send BaRS messages to $process-message",
                    other.unwrap_or("(missing)")
                ),
            )
            .at("Bundle.type")])
        }
    };
    let Some(raw_entries) = bundle.get("entry").and_then(Value::as_array) else {
        return Err(vec![Issue::error(
            IssueCode::Required,
            "the Bundle has no entries",
        )
        .at("Bundle.entry")]);
    };
    let whole = Resolver::new().with_bundle(bundle, "Bundle");
    let mut entries = Vec::with_capacity(raw_entries.len());
    for (index, entry) in raw_entries.iter().enumerate() {
        let path = format!("Bundle.entry[{index}]");
        let Some(resource) = entry.get("resource") else {
            entries.push(Entry::Refused {
                index,
                issues: vec![
                    Issue::error(IssueCode::Required, "the entry has no resource")
                        .at(format!("{path}.resource")),
                ],
            });
            continue;
        };
        let resource_type = crate::parse::resource_type(resource)
            .unwrap_or("")
            .to_owned();
        let method = entry
            .get("request")
            .and_then(|request| text(request, "method"));
        let url = entry
            .get("request")
            .and_then(|request| text(request, "url"));
        let mut issues = Vec::new();
        if method != Some("POST") {
            issues.push(
                Issue::error(
                    IssueCode::NotSupported,
                    format!(
                        "only POST entries are supported, not {}",
                        method.unwrap_or("(missing)")
                    ),
                )
                .at(format!("{path}.request.method")),
            );
        }
        if url != Some(resource_type.as_str()) {
            issues.push(
                Issue::error(
                    IssueCode::Invalid,
                    format!("request.url must be {resource_type} for a {resource_type} entry"),
                )
                .at(format!("{path}.request.url")),
            );
        }
        let resource_path = format!("{path}.resource");
        if resource_type == "ServiceRequest" {
            if issues.is_empty() {
                let resolver = match kind {
                    BundleKind::Transaction => whole.clone(),
                    BundleKind::Batch => Resolver::new(),
                }
                .with_contained(resource, &resource_path);
                entries.push(Entry::Referral {
                    index,
                    request: Located {
                        resource,
                        path: resource_path,
                        fallback_identifier: None,
                    },
                    resolver,
                });
            } else {
                entries.push(Entry::Refused { index, issues });
            }
        } else if kind == BundleKind::Transaction && CONTEXT_TYPES.contains(&resource_type.as_str())
        {
            if issues.is_empty() {
                entries.push(Entry::Context {
                    index,
                    resource_type,
                });
            } else {
                entries.push(Entry::Refused { index, issues });
            }
        } else {
            issues.push(
                Issue::error(
                    IssueCode::NotSupported,
                    match kind {
                        BundleKind::Batch => format!("a batch carries ServiceRequests only, not {resource_type}"),
                        BundleKind::Transaction => format!(
                            "a transaction carries ServiceRequests and the Patients, Practitioners and Organizations \
                             they point at, not {resource_type}"
                        ),
                    },
                )
                .at(format!("{resource_path}.resourceType")),
            );
            entries.push(Entry::Refused { index, issues });
        }
    }
    Ok(BatchRequest { kind, entries })
}
